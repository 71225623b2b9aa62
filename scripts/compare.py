"""Compare bundle templates on one dataset with one training budget.

    python -m scripts.compare --dataset_dir D --output_dir C \
        [--templates nnunet_3d_fullres,attention_unet,multires_unet,nonlocal_unet,residual_unet]
        [--epochs 10 --iterations_per_epoch 40] [--overrides "{residual_unet: {feature_scale: 0.25}}"]

Each template is planned on D (`C/<template>/`), trained on all of D's training cases, then evaluated on
`imagesTs` against `labelsTs`. Writes `C/comparison.json`, `C/comparison.md` and `C/comparison.png`; each step's
output goes to `C/logs/`. A template whose record (`C/<template>/comparison_record.json`) was made with the same
settings is reused, so an interrupted comparison goes on where it stopped.
`overrides` maps a template to config overrides for its training and evaluation; the key `all` applies to
every template.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import fire

from custom_components.data.dataset import read_dataset
from custom_components.data.errors import DatasetError
from custom_components.evaluation.architecture_table import comparison_markdown, plot_comparison
from custom_components.io_utils import atomic_write_json, atomic_write_text
from custom_components.bundle_config import overrides_for
from custom_components.training.cross_validation import cli_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATES = "nnunet_3d_fullres,attention_unet,multires_unet,nonlocal_unet,residual_unet"
RECORD = "comparison_record.json"


def template_dir(name: str) -> Path:
    """A template by name (a folder of `bundles/`) or by path."""
    path = Path(name) if Path(name).is_dir() else REPO_ROOT / "bundles" / name
    if not (path / "configs" / "train.yaml").is_file():
        raise DatasetError(f"template '{name}': no bundle template there ({path}/configs/train.yaml is missing)")
    if (path / "configs" / "train_stage1.yaml").is_file():
        raise DatasetError(f"template '{name}' is a cascade: its two stages train through scripts.cross_validate, "
                           "which this comparison does not run")
    return path


def machine() -> str:
    import torch

    device = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU only"
    cpu = " ".join(dict.fromkeys(p for p in (platform.machine(), platform.processor()) if p))
    return f"{cpu}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def run_measured(args: list[str], log: Path) -> tuple[float, float]:
    """Run a command with its output in `log`; return its wall time (s) and the peak resident set of its main
    process (MB). A failure raises with the log's path and its last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "".join(open(log).readlines()[-15:])
        raise RuntimeError(f"{' '.join(args[2:5])} failed (exit {proc.returncode}); log: {log}\n{tail}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def parameter_count(bundle: Path, overrides: Mapping) -> tuple[int, str]:
    """The trained network's parameter count and class, from the planned inference config and its overrides."""
    from custom_components.bundle_config import bundle_parser

    net = bundle_parser(bundle, "inference.yaml", overrides).get_parsed_content("network_def")
    return sum(p.numel() for p in net.parameters()), type(net).__name__


def compare_template(name: str, dataset_dir: str, output_dir: Path, settings: Mapping, overrides: Mapping) -> dict:
    """Plan, train and evaluate one template; its record (reused when `settings` and `overrides` match)."""
    bundle = output_dir / Path(name).name
    record_path = bundle / RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings") == dict(settings) and record.get("overrides") == dict(overrides):
            print(f"== {name}: reusing {record_path}", flush=True)
            return record
    if bundle.exists():
        raise DatasetError(f"{bundle} exists without a matching {RECORD} (another budget, or an interrupted run): "
                           "remove it, or choose another --output_dir")
    logs = output_dir / "logs"
    py = sys.executable
    print(f"== {name}: plan", flush=True)
    run_measured([py, "-m", "scripts.plan", "--dataset_dir", dataset_dir, "--template", str(template_dir(name)),
                  "--output_dir", str(bundle)], logs / f"{bundle.name}_plan.log")
    print(f"== {name}: train ({settings['epochs']} epochs x {settings['iterations_per_epoch']} iterations)", flush=True)
    train_s, train_mb = run_measured(
        [py, "-m", "monai.bundle", "run", "training", "--config_file", str(bundle / "configs" / "train.yaml"),
         "--bundle_root", str(bundle), "--dataset_dir", dataset_dir, "--fold", "all", "--val_interval", "0",
         "--train#trainer#max_epochs", str(settings["epochs"]), "--iterations_per_epoch", str(settings["iterations_per_epoch"]),
         "--num_workers", str(settings["num_workers"])] + cli_overrides(overrides), logs / f"{bundle.name}_train.log")
    print(f"== {name}: evaluate on imagesTs", flush=True)
    predictions = bundle / "test_predictions"
    _, eval_mb = run_measured(
        [py, "-m", "monai.bundle", "run", "evaluate", "--config_file", str(bundle / "configs" / "evaluate.yaml"),
         "--bundle_root", str(bundle), "--dataset_dir", dataset_dir, "--output_dir", str(predictions)]
        + cli_overrides(overrides_for(bundle / "configs" / "evaluate.yaml", overrides)), logs / f"{bundle.name}_evaluate.log")
    metrics = json.loads((predictions / "metrics.json").read_text())
    progress = json.loads((bundle / "logs" / "progress.json").read_text())
    gpu = [e["peak_gpu_mb"] for e in progress if "peak_gpu_mb" in e]
    parameters, network = parameter_count(bundle, overrides)
    record = {
        "template": bundle.name, "network": network, "parameters": parameters,
        "mean_dice": metrics["mean_dice"], "dice_per_class": {c: v["dice"] for c, v in metrics["per_class"].items()},
        "mean_hd95": metrics.get("mean_hd95"),
        "training_seconds": round(train_s, 1), "training_epoch_seconds": round(sum(e["seconds"] for e in progress), 1),
        "final_training_loss": progress[-1]["loss"] if progress else None,
        "inference_seconds_per_case": metrics.get("seconds_per_case"),
        "peak_rss_training_mb": round(train_mb, 1), "peak_rss_inference_mb": round(eval_mb, 1),
        "peak_gpu_training_mb": max(gpu) if gpu else None,
        "settings": dict(settings), "overrides": dict(overrides),
    }
    atomic_write_json(record_path, record)
    print(f"   mean test Dice {record['mean_dice']}, training {record['training_seconds']:.0f} s, "
          f"{record['parameters']:,} parameters", flush=True)
    return record


def main(dataset_dir: str, output_dir: str = "runs/compare", templates: str = DEFAULT_TEMPLATES, epochs: int = 10,
         iterations_per_epoch: int = 40, num_workers: int = 2, overrides: Mapping | None = None) -> None:
    """Plan, train and evaluate every template with the same budget; write the table, the JSON and the chart."""
    try:
        info = read_dataset(dataset_dir)
        if not info.test or any("label" not in c for c in info.test):
            raise DatasetError(f"{dataset_dir}: the comparison scores test cases, so imagesTs needs labelsTs for every case")
        names = [t.strip() for t in (templates.split(",") if isinstance(templates, str) else templates) if t.strip()]
        if not names:
            raise DatasetError("no templates given (--templates a,b,...)")
        for name in names:
            template_dir(name)
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(names) - {"all"}
        if unknown:
            raise DatasetError(f"--overrides names templates that are not compared: {sorted(unknown)}")
        settings = {"epochs": int(epochs), "iterations_per_epoch": int(iterations_per_epoch), "num_workers": int(num_workers)}
        out = Path(output_dir)
        records = [compare_template(n, str(Path(dataset_dir).resolve()), out, settings,
                                    {**overrides.get("all", {}), **overrides.get(n, {})}) for n in names]
    except (DatasetError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    table_settings = {**settings, "dataset_dir": dataset_dir, "num_training_cases": len(info.training),
                      "num_test_cases": len(info.test), "machine": machine(), "overrides": overrides}
    atomic_write_json(out / "comparison.json", {"settings": table_settings, "templates": records})
    table = comparison_markdown(records, table_settings)
    atomic_write_text(out / "comparison.md", "# Template comparison\n\n" + table)
    plot_comparison(records, out / "comparison.png")
    print(table)
    print(f"written: {out}/comparison.md, comparison.json, comparison.png")


if __name__ == "__main__":
    fire.Fire(main)
