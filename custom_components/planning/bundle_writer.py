"""Turn a bundle template (`bundles/<name>`) into a planned bundle folder.

Templates share config through `_include_` lists: names resolved next to the including file first, then in
`custom_components/configs/`. A planned bundle is self-contained: each of its train, inference and evaluate
configs is written flattened (includes merged, the plan's numbers inserted as the `plan` section), so that
`monai.bundle`, MONAI Label and the TorchScript export all see one plain config file.

A config gets the `plan` section of the configuration the bundle is planned for, unless it names another one
(`plan_configuration`, as the cascade's stage-1 configs do); a config that names `stage1_plan_configuration`
(the cascade) also gets that configuration's numbers as `plan_stage1`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

from custom_components.data.errors import DatasetError, OutputError
from custom_components.io_utils import atomic_write_json, atomic_write_text
from custom_components.planning.dataset_plan import plan_section

SHARED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
INCLUDE_KEY = "_include_"


def _load_yaml(path: Path) -> dict:
    with open(path) as f:
        content = yaml.safe_load(f) or {}
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: a bundle config must be a mapping at the top level")
    return content


def _find_include(name: str, here: Path) -> Path:
    for base in (here, SHARED_CONFIG_DIR):
        if (base / name).is_file():
            return base / name
    raise DatasetError(f"{here}: included config '{name}' found neither there nor in {SHARED_CONFIG_DIR}")


def _set_path(config: dict, key: str, value) -> None:
    """Set `a#b#c` (MONAI's id separator) inside nested dicts/lists."""
    parts = key.split("#")
    node = config
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def merge_configs(base: dict, override: Mapping) -> dict:
    """Later wins; nested mappings merge, unless they build different things (another `_target_`), where the
    later replaces the earlier; `a#b` keys set a nested id of `base`, and stay literal (an override for MONAI to
    apply later, as in multi_gpu_train.yaml) when `base` has no `a`."""
    out = dict(base)
    for key, value in override.items():
        if "#" in key and key.split("#")[0] in out:
            _set_path(out, key, value)
        elif (isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
              and value.get("_target_", out[key].get("_target_")) == out[key].get("_target_")):
            out[key] = merge_configs(dict(out[key]), value)
        else:
            out[key] = value
    return out


def resolve_config(path: str | os.PathLike, _seen: tuple = ()) -> tuple[dict, list[Path]]:
    """The config at `path` with its includes merged in; also returns the bundle-local files it included."""
    path = Path(path).resolve()
    if path in _seen:
        raise DatasetError(f"{path}: include cycle {' -> '.join(map(str, _seen + (path,)))}")
    own = _load_yaml(path)
    merged: dict = {}
    local: list[Path] = []
    for name in own.pop(INCLUDE_KEY, []) or []:
        inc = _find_include(name, path.parent)
        if inc.parent == path.parent:
            local.append(inc)
        content, sub_local = resolve_config(inc, _seen + (path,))
        local += sub_local
        merged = merge_configs(merged, content)
    return merge_configs(merged, own), local


def template_configuration(template: str | os.PathLike) -> str:
    """The plans.json configuration a template is built for (`plan_configuration` in its train config)."""
    path = Path(template) / "configs" / "train.yaml"
    if not path.is_file():
        raise DatasetError(f"{template}: not a bundle template (no configs/train.yaml)")
    config, _ = resolve_config(path)
    return str(config.get("plan_configuration", "3d_fullres"))


def planned_configurations(template: str | os.PathLike, configuration: str | None = None) -> list[str]:
    """Every plans.json configuration the template's configs use, the bundle's own (`configuration`, default
    the template's) first."""
    template = Path(template)
    template_main = template_configuration(template)
    main = configuration or template_main
    used = [main]
    for cfg in sorted((template / "configs").glob("*.yaml")):
        if INCLUDE_KEY in _load_yaml(cfg):
            content, _ = resolve_config(cfg)
            used += [c for c in _sections(content, template_main, main).values() if c not in used]
    return used


def _sections(content: Mapping, template_main: str, main: str) -> dict[str, str]:
    """The plan sections a workflow config gets: {"plan": configuration, ["plan_stage1": configuration]}."""
    own = str(content.get("plan_configuration", template_main))
    sections = {"plan": main if own == template_main else own}
    if "stage1_plan_configuration" in content:
        sections["plan_stage1"] = str(content["stage1_plan_configuration"])
    return sections


def write_planned_bundle(template: str | os.PathLike, output_dir: str | os.PathLike, plans: Mapping,
                         configuration: str, dataset_dir: str) -> Path:
    """Copy the template to `output_dir`, write `configs/plans.json`, flatten every config that includes others,
    giving each workflow config its plan sections (`configuration` is the bundle's own)."""
    template, out = Path(template), Path(output_dir)
    if not (template / "configs" / "metadata.json").is_file():
        raise DatasetError(f"{template}: not a bundle template (no configs/metadata.json)")
    if out.resolve() == template.resolve():
        raise DatasetError(f"{out}: the output folder must differ from the template (templates are never modified)")
    flattened: dict[str, dict] = {}
    used_local: set[str] = set()
    template_main = template_configuration(template)
    for cfg in sorted((template / "configs").glob("*.yaml")):
        if INCLUDE_KEY not in _load_yaml(cfg):
            continue
        content, local = resolve_config(cfg)
        used_local.update(p.name for p in local)
        if "network_def" in content:  # a full workflow config (not an override file): give it the plan
            sections = _sections(content, template_main, configuration)
            content = merge_configs(content, {"plan_configuration": sections["plan"],
                                              **{k: plan_section(plans, c) for k, c in sections.items()},
                                              "dataset_dir": str(dataset_dir), "bundle_root": str(out.resolve())})
        flattened[cfg.name] = content
    try:
        out.mkdir(parents=True, exist_ok=True)
        for item in template.iterdir():
            dst = out / item.name
            if item.is_dir():
                shutil.copytree(item, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dst)
    except (OSError, shutil.Error) as e:
        raise OutputError(f"{out}: the planned bundle cannot be written there ({getattr(e, 'strerror', None) or e})") from e
    for name, content in flattened.items():
        text = f"# Planned from {name} of bundle template '{template.name}'; the plan section comes from plans.json.\n"
        atomic_write_text(out / "configs" / name, text + yaml.safe_dump(content, sort_keys=False, width=120))
    for name in used_local - set(flattened):
        (out / "configs" / name).unlink(missing_ok=True)
    atomic_write_json(out / "configs" / "plans.json", plans)
    meta_path = out / "configs" / "metadata.json"
    with open(meta_path) as f:
        meta = json.load(f)
    atomic_write_json(meta_path, planned_metadata(meta, plans, plan_section(plans, configuration)))
    return out


def planned_metadata(meta: Mapping, plans: Mapping, plan: Mapping) -> dict:
    """The template's metadata with the dataset's channels and classes, and the input sizes the network takes
    (multiples of the total stride per axis, MONAI's `"8*n"` notation)."""
    meta = json.loads(json.dumps(meta))
    divisor = [int(np.prod([s[i] for s in plan["strides"]])) for i in range(len(plan["patch_size"]))]
    shape = [f"{d}*n" for d in divisor]
    channels = plans["channel_names"]
    image = meta["network_data_format"]["inputs"]["image"]
    image.update({"num_channels": plans["num_channels"], "spatial_shape": shape,
                  "channel_def": {str(k): v for k, v in channels.items()},
                  "modality": "/".join(sorted(set(channels.values())))})
    image["format"] = "hounsfield" if set(channels.values()) == {"CT"} else "magnitude"
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred.update({"num_channels": plans["num_classes"], "spatial_shape": shape,
                 "channel_def": {str(v): k for k, v in sorted(plans["labels"].items(), key=lambda kv: kv[1])}})
    meta["label_classes"] = ", ".join(f"{v}: {k}" for k, v in sorted(plans["labels"].items(), key=lambda kv: kv[1]))
    meta["pred_classes"] = meta["label_classes"]
    meta["data_source"] = f"planned on {plans['dataset_name']} ({plans['dataset_dir']})"
    return meta
