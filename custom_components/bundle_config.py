"""A planned bundle's config read the way `monai.bundle run` reads it: its root set, command-line style overrides
applied. Scripts and components that parse a bundle themselves share this."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path


def bundle_parser(bundle_root: str | os.PathLike, config: str = "inference.yaml", overrides: Mapping | None = None):
    """A ConfigParser of `bundle_root/configs/<config>` (an absolute `config` is read as it is) with `bundle_root`
    and `overrides` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / config))
    parser.update({"bundle_root": str(bundle_root), **dict(overrides or {})})
    return parser


# monai.bundle run's own arguments, which are not config ids (the tracking ones are MLflow settings)
RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
                 "workflow_name", "workflow_type", "properties_path", "bundle_root",
                 "tracking_uri", "experiment_name", "run_name", "save_execute_config"}
_checked = False


def command_line_overrides(argv: list[str]) -> dict[str, str]:
    """The `--key value` (or `--key=value`, or a bare `--flag`) pairs of a fire command line, as written."""
    pairs, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and len(token) > 2:
            key, eq, value = token[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            pairs[key] = value
        i += 1
    return pairs


def unknown_override(parser, key: str) -> bool:
    """An override id that would change nothing: in none of the configs, and not a new key of a mapping that is
    (a new argument of a `_target_` component, or a new entry of a table such as `schedules`)."""
    if key in RUN_ARGUMENTS or key.startswith("_meta_") or key in parser:
        return False
    parent = key.rpartition("#")[0]
    return not parent or parent not in parser or not isinstance(parser.get(parent), dict)


def check_command_line_ids(bundle_root: str | os.PathLike | None = None, argv: list[str] | None = None) -> None:
    """Refuse a `python -m monai.bundle run` override that would change nothing (`unknown_override`): MONAI would
    add it as a new, unused id, and a misspelt `--iteration_per_epoch 5` would be silently ignored. Called from
    the configs' `initialize`, once per process; a workflow of another bundle run inside it (an ensemble's
    members), or a program that is not monai.bundle's command line (MONAI Label, Deploy), is left alone."""
    global _checked
    import ast
    import difflib

    from monai.bundle import ConfigParser

    from custom_components.data.errors import DatasetError

    argv = sys.argv if argv is None else argv
    if _checked or not argv or Path(argv[0]).parent.name != "bundle" or Path(argv[0]).name != "__main__.py":
        return
    overrides = command_line_overrides(argv[1:])
    files = overrides.get("config_file")
    given_root = overrides.get("bundle_root")
    if not files or (bundle_root is not None and given_root and Path(given_root).resolve() != Path(bundle_root).resolve()):
        return
    _checked = True
    files = ast.literal_eval(files) if files.lstrip()[:1] in "[(" else files
    parser = ConfigParser()
    parser.read_config(list(files) if isinstance(files, tuple) else files)
    unknown = [k for k in overrides if unknown_override(parser, k)]
    if unknown:
        ids = list(_ids(parser.get()))
        hints = [f"--{k}" + (f" (did you mean --{m[0]}?)" if (m := difflib.get_close_matches(k, ids, n=1)) else "")
                 for k in unknown]
        raise DatasetError(f"{files}: no config id for the override(s) {', '.join(hints)}")


def overrides_for(config_path: str | os.PathLike, overrides: Mapping) -> dict:
    """The overrides whose top-level id a config has: one set of overrides given to training and to inference
    reaches each with what it knows (epochs stay with training; the plan's numbers go to both)."""
    import yaml

    with open(config_path) as f:
        ids = set(yaml.safe_load(f))
    return {k: v for k, v in dict(overrides).items() if k.split("#")[0] in ids}


def _ids(config, prefix: str = ""):
    """Every id of a nested config, `a#b#c` style."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        name = f"{prefix}{k}"
        yield name
        yield from _ids(v, name + "#")
