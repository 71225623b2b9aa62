"""A planned bundle's config read the way `monai.bundle run` reads it: its root set, command-line style overrides
applied. Scripts and components that parse a bundle themselves share this."""

from __future__ import annotations

import functools
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
    """An override id that would change nothing, or break instantiation: in none of the configs, and not a new
    key of a mapping that is (an argument that its `_target_` component takes, or a new entry of a table such as
    `schedules`)."""
    if key in RUN_ARGUMENTS or key.startswith("_meta_") or key in parser:
        return False
    parent, name = mapping_of(parser, key), key.rpartition("#")[2]
    if parent is None:
        return True
    arguments = component_arguments(parser, parent)
    return arguments is not None and not name.startswith("_") and name not in arguments


def mapping_of(parser, key: str) -> str | None:
    """The id of the config mapping that `key` would be a new key of; None where there is none."""
    parent = key.rpartition("#")[0]
    return parent if parent and parent in parser and isinstance(parser.get(parent), dict) else None


@functools.cache
def _locator():
    from monai.bundle.config_item import ComponentLocator

    return ComponentLocator()  # it scans MONAI's modules once, on its first lookup


def component_arguments(parser, component: str) -> list[str] | None:
    """The argument names of the callable that the mapping at `component` instantiates; None where any name may
    be right (not a component, a `**kwargs` callable, or a target that cannot be looked up here)."""
    import inspect
    from pydoc import locate

    from monai.bundle.config_item import ConfigComponent

    config = parser.get(component)
    if not ConfigComponent.is_instantiable(config):
        return None
    target = ConfigComponent(config, locator=_locator()).resolve_module_name()
    found = locate(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(found).parameters.values()
    except (TypeError, ValueError):  # None (not found), or a callable without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters]


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
        hints = []
        for k in unknown:
            parent = mapping_of(parser, k)
            arguments = component_arguments(parser, parent) if parent is not None else None
            near = difflib.get_close_matches(k, ids + [f"{parent}#{a}" for a in arguments or ()], n=1)
            hints.append(f"--{k}" + (f" (did you mean --{near[0]}?)" if near else ""))
        raise DatasetError(f"{files}: no config id, nor an argument of its component, for the override(s) {', '.join(hints)}")


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
