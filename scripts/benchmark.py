"""Side-by-side benchmark against nnU-Net v2 (2.8.1) on the same data and the same plan, on this machine.

    python -m scripts.benchmark --dataset_dir D --output_dir B [--quick] [--repeats 3] [--threads 2]

nnU-Net runs from its own environment (scripts/setup_nnunet_env.sh, built on first use) on a linked copy of D
in its raw layout (`B/nnunet/`). It plans first; our 3D full-res bundle then takes nnU-Net's plan (patch, batch,
topology, spacing), so both systems run the same network on the same patches. The runs alternate between the
two systems, in turn order reversed every repeat, so that drift of a shared machine hits both. Writes
`B/benchmark.json` and `B/benchmark.md`: each figure for both, with the ratio ours / nnU-Net's and its target.

Figures so far: preprocessing wall time (fingerprint, plan and preprocessing of every training case),
training seconds per iteration (data loading and augmentation included, after the first epoch), sliding-window
inference per case with and without mirroring, the peak resident memory of that inference process, and the
convolution throughput of mirrored inference against a plain Conv3d's peak. Not yet: test Dice at an equal
training budget, and the scaling with volume size.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import fire

from custom_components.benchmarking import plan_overrides, write_nnunet_raw
from custom_components.data import DatasetError, read_dataset
from custom_components.io_utils import atomic_write_json, atomic_write_text
from scripts.compare import run_measured

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "bundles" / "nnunet_3d_fullres"
DATASET_ID = 990
TARGETS = {  # ours / nnU-Net's, at most (issue 6)
    "preprocessing_seconds": 0.5,
    "training_seconds_per_iteration": 0.67,
    "inference_seconds_no_mirroring": 0.67,
    "inference_seconds_mirroring": 0.67,
    "inference_peak_rss_mb": 1.0,
}
LABELS = {
    "preprocessing_seconds": "preprocessing, whole dataset (s)",
    "training_seconds_per_iteration": "training, s per iteration",
    "inference_seconds_no_mirroring": "sliding window per case, no mirroring (s)",
    "inference_seconds_mirroring": "sliding window per case, 8-fold mirroring (s)",
    "inference_peak_rss_mb": "peak resident memory of inference (MB)",
}


def nnunet_python() -> str:
    proc = subprocess.run(["bash", "-c", f"source {REPO_ROOT}/scripts/setup_nnunet_env.sh >&2 && echo $NNUNET_PY"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building nnU-Net's environment failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def versions(nnunet_py: str) -> dict:
    import monai
    import torch

    peer = subprocess.run([nnunet_py, "-c", "import importlib.metadata as m, torch; "
                           "print(m.version('nnunetv2'), torch.__version__)"], capture_output=True, text=True)
    nnunet, peer_torch = (peer.stdout.split() + ["?", "?"])[:2]
    return {"torch": torch.__version__, "monai": monai.__version__, "nnunetv2": nnunet, "nnunet_torch": peer_torch}


class Bench:
    """One benchmark run's folders, environments and the plan both systems share."""

    def __init__(self, dataset_dir: str, output_dir: str, threads: int) -> None:
        self.dataset_dir = Path(dataset_dir).resolve()
        self.out = Path(output_dir).resolve()
        self.threads = int(threads)
        self.info = read_dataset(self.dataset_dir)
        if not self.info.test:
            raise DatasetError(f"{self.dataset_dir}/imagesTs: the benchmark times inference on a test case; none found")
        self.nnunet_py = nnunet_python()
        self.nn_root = self.out / "nnunet"
        self.raw = write_nnunet_raw(self.dataset_dir, self.nn_root / "raw", DATASET_ID)
        os.environ.update({"nnUNet_raw": str(self.nn_root / "raw"), "nnUNet_preprocessed": str(self.nn_root / "preprocessed"),
                           "nnUNet_results": str(self.nn_root / "results"), "MPLBACKEND": "Agg"})
        self.plans_dir = self.nn_root / "preprocessed" / self.raw.name
        self.bundle = self.out / "ours" / "nnunet_3d_fullres"
        self.logs = self.out / "logs"
        self.image = self.info.test[0]["image"][0]
        self.overrides: dict = {}
        self.inference_settings: dict = {}
        self.gflops: dict[str, list[float]] = {"ours": [], "nnunet": []}

    def nnunet_bin(self, name: str) -> str:
        return str(Path(self.nnunet_py).parent / name)

    # -- preprocessing
    def preprocess_nnunet(self, tag: str) -> float:
        shutil.rmtree(self.plans_dir, ignore_errors=True)
        seconds, _ = run_measured([self.nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                                   "3d_fullres", "-np", str(self.threads), "-npfp", str(self.threads)],
                                  self.logs / f"preprocess_nnunet_{tag}.log")
        self.overrides = plan_overrides(self.plans_dir / "nnUNetPlans.json")
        return seconds

    def preprocess_ours(self, tag: str) -> float:
        shutil.rmtree(self.bundle, ignore_errors=True)
        plan, _ = run_measured([sys.executable, "-m", "scripts.plan", "--dataset_dir", str(self.dataset_dir),
                                "--template", str(TEMPLATE), "--output_dir", str(self.bundle)],
                               self.logs / f"plan_ours_{tag}.log")
        cases, _ = run_measured([sys.executable, "-m", "scripts.benchmark", "preprocess", str(self.bundle),
                                 str(self.dataset_dir), "--overrides", json.dumps(self.overrides)],
                                self.logs / f"preprocess_ours_{tag}.log")
        return plan + cases

    # -- inference
    def infer(self, system: str, mirroring: bool, tag: str, repeats: int) -> tuple[float, float]:
        log = self.logs / f"infer_{system}_{'mirror' if mirroring else 'plain'}_{tag}.log"
        if system == "nnunet":
            args = [self.nnunet_py, str(REPO_ROOT / "scripts" / "nnunet_peer" / "time_inference.py"), str(self.plans_dir),
                    self.image, "--mirroring", str(int(mirroring)), "--repeats", str(repeats), "--threads", str(self.threads)]
        else:
            args = [sys.executable, "-m", "scripts.benchmark", "infer", str(self.bundle), self.image, "--overrides",
                    json.dumps(self.overrides), "--mirroring", str(mirroring), "--repeats", str(repeats),
                    "--threads", str(self.threads)]
        _, rss = run_measured(args, log)
        result = json.loads(log.read_text().strip().splitlines()[-1])
        self.inference_settings[system] = result["settings"]
        if mirroring:
            self.gflops[system].append(result["gflops"])
        return result["median_seconds"], rss

    # -- training
    def train(self, system: str, epochs: int, iterations: int) -> float:
        """Median seconds per training iteration after the first epoch (the warm-up)."""
        if system == "nnunet":
            os.environ.update({"BENCH_EPOCHS": str(epochs), "BENCH_ITERATIONS": str(iterations), "BENCH_VAL_ITERATIONS": "1"})
            results = self.nn_root / "results"
            shutil.rmtree(results, ignore_errors=True)
            run_measured([self.nnunet_bin("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "all", "-tr",
                          "nnUNetTrainerBudget", "-device", "cpu"], self.logs / "train_nnunet.log")
            timing = json.loads(next(results.rglob("bench_timing.json")).read_text())
            epochs_starts, current = [], []
            for t in timing["iteration_starts"]:
                if t is None:
                    epochs_starts.append(current)
                    current = []
                else:
                    current.append(t)
            gaps = [b - a for starts in epochs_starts[1:] for a, b in zip(starts, starts[1:])]
            return statistics.median(gaps)
        for name in ("models", "logs"):
            shutil.rmtree(self.bundle / name, ignore_errors=True)
        args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                str(self.bundle / "configs" / "train.yaml"), "--bundle_root", str(self.bundle), "--dataset_dir",
                str(self.dataset_dir), "--fold", "all", "--val_interval", "0", "--train#trainer#max_epochs", str(epochs),
                "--iterations_per_epoch", str(iterations)]
        for key, value in self.overrides.items():
            args += [f"--{key}", json.dumps(value)]
        run_measured(args, self.logs / "train_ours.log")
        history = json.loads((self.bundle / "logs" / "progress.json").read_text())
        return statistics.median(h["iteration_seconds"] for h in history[1:])


def throughput(bench: Bench, threads: int) -> dict:
    """Convolution GFLOP/s reached by each system's mirrored inference, and as a fraction of the peak that one
    large Conv3d reaches here in the precision that system computes in."""
    from custom_components.benchmarking.throughput import conv_peak_gflops

    out, peaks = {}, {}
    for system, values in bench.gflops.items():
        precision = bench.inference_settings.get(system, {}).get("precision", "float32")
        if precision not in peaks:  # one measurement per precision, so both systems are held to the same peak
            peaks[precision] = conv_peak_gflops(threads, precision)
        peak = peaks[precision]
        achieved = statistics.median(values)
        out[system] = {"gflops": round(achieved, 1), "precision": precision, "peak_gflops": round(peak, 1),
                       "fraction_of_peak": round(achieved / peak, 3)}
    return out


def figure(ours: list[float], nnunet: list[float]) -> dict:
    o, n = statistics.median(ours), statistics.median(nnunet)
    return {"ours": round(o, 3), "nnunet": round(n, 3), "ratio": round(o / n, 3), "ours_runs": ours, "nnunet_runs": nnunet}


def markdown(report: Mapping) -> str:
    m = report["machine"]
    lines = [f"# Benchmark: ours vs nnU-Net v2 ({report['date']})", "",
             f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {report['threads']} torch threads; no GPU. "
             f"torch {report['versions']['torch']}, MONAI {report['versions']['monai']}, nnunetv2 "
             f"{report['versions']['nnunetv2']}. Dataset: {report['dataset']} ({report['training_cases']} training "
             f"cases). Medians of {report['repeats']} alternating runs; training: {report['training_budget']}.", "",
             f"Command: `{report['command']}`", "",
             "| figure | ours | nnU-Net v2 | ours / nnU-Net | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for key, f in report["figures"].items():
        target = TARGETS[key]
        met = "yes" if f["ratio"] <= target else f"no (by {f['ratio'] - target:.2f})"
        lines.append(f"| {LABELS[key]} | {f['ours']} | {f['nnunet']} | {f['ratio']} | <= {target} | {met} |")
    for name, t in report.get("throughput", {}).items():
        lines.append(f"\nThroughput of mirrored inference, {name}: {t['gflops']} GFLOP/s in {t['precision']}, "
                     f"{t['fraction_of_peak']:.0%} of the {t['peak_gflops']} GFLOP/s one large Conv3d reaches here.")
    settings = report.get("inference_settings", {})
    if settings:
        lines += ["", "Inference as each system runs by default: " + "; ".join(
            f"{name}: {', '.join(f'{k} {v}' for k, v in s.items())}" for name, s in settings.items())]
    lines += ["", f"Plan (nnU-Net's, used by both): patch {report['plan']['plan#patch_size']} (x, y, z), batch "
              f"{report['plan']['plan#batch_size']}, widths {report['plan']['plan#features_per_stage']}."]
    return "\n".join(lines) + "\n"


def run(dataset_dir: str, output_dir: str, quick: bool = False, repeats: int | None = None, threads: int = 2,
        epochs: int | None = None, iterations: int | None = None) -> dict:
    repeats = int(repeats or (2 if quick else 3))
    epochs, iterations = int(epochs or (2 if quick else 3)), int(iterations or (8 if quick else 20))
    bench = Bench(dataset_dir, output_dir, threads)
    runs: dict[str, dict[str, list]] = {k: {"ours": [], "nnunet": []} for k in TARGETS}
    for r in range(repeats):
        order = ("nnunet", "ours") if r % 2 == 0 else ("ours", "nnunet")  # nnU-Net plans first on the first turn
        for system in order:
            step = bench.preprocess_nnunet if system == "nnunet" else bench.preprocess_ours
            runs["preprocessing_seconds"][system].append(round(step(str(r)), 3))
    for r in range(repeats):
        for mirroring in (False, True):
            for system in (("nnunet", "ours") if r % 2 == 0 else ("ours", "nnunet")):
                seconds, rss = bench.infer(system, mirroring, str(r), repeats=3)
                key = "inference_seconds_mirroring" if mirroring else "inference_seconds_no_mirroring"
                runs[key][system].append(round(seconds, 3))
                runs["inference_peak_rss_mb"][system].append(round(rss, 1))
    for system in ("nnunet", "ours"):
        runs["training_seconds_per_iteration"][system].append(round(bench.train(system, epochs, iterations), 3))
    report = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "threads": threads,
        "versions": versions(bench.nnunet_py), "dataset": str(bench.dataset_dir), "training_cases": len(bench.info.training),
        "repeats": repeats, "training_budget": f"{epochs} epochs x {iterations} iterations, median after epoch 1",
        "command": " ".join(["python -m scripts.benchmark", f"--dataset_dir {dataset_dir}", f"--output_dir {output_dir}"]
                            + (["--quick"] if quick else [])),
        "plan": bench.overrides, "targets": TARGETS, "inference_settings": bench.inference_settings,
        "throughput": throughput(bench, threads),
        "figures": {k: figure(v["ours"], v["nnunet"]) for k, v in runs.items()},
    }
    atomic_write_json(bench.out / "benchmark.json", report)
    atomic_write_text(bench.out / "benchmark.md", markdown(report))
    return report


def preprocess(bundle_root: str, dataset_dir: str, overrides: str = "{}") -> None:
    """(subprocess of `run`) our training preprocessing over every training case; one JSON line."""
    from custom_components.benchmarking import preprocess_training_cases

    print(json.dumps(preprocess_training_cases(bundle_root, dataset_dir, json.loads(overrides) if isinstance(overrides, str) else overrides)))


def infer(bundle_root: str, image: str, overrides: str = "{}", mirroring: bool = False, repeats: int = 3,
          threads: int = 2) -> None:
    """(subprocess of `run`) our sliding window timed in-process; one JSON line."""
    from custom_components.benchmarking import time_sliding_window

    over = json.loads(overrides) if isinstance(overrides, str) else overrides
    print(json.dumps(time_sliding_window(bundle_root, image, over, bool(mirroring), repeats, threads)))


def main(dataset_dir: str, output_dir: str, quick: bool = False, repeats: int | None = None, threads: int = 2,
         epochs: int | None = None, iterations: int | None = None) -> None:
    """Run the benchmark; print benchmark.md."""
    try:
        run(dataset_dir, output_dir, quick, repeats, threads, epochs, iterations)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print((Path(output_dir) / "benchmark.md").read_text())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("preprocess", "infer"):
        fire.Fire({"preprocess": preprocess, "infer": infer})
    else:
        fire.Fire(main)
