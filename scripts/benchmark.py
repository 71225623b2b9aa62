"""Side-by-side benchmark against nnU-Net v2 (2.8.1) on the same data and the same plan, on this machine.

    python -m scripts.benchmark --dataset_dir D --output_dir B [--quick] [--repeats 3] [--threads 2]
        [--epochs E --iterations I] (the training-speed runs) [--budget_seconds S --budget_epoch K] (the equal-budget
        runs: S seconds each, epochs of K iterations) [--schedule nnunet_v2] (our recipe in both) [--scaling False]

nnU-Net runs from its own environment (scripts/setup_nnunet_env.sh, built on first use) on a linked copy of D
in its raw layout (`B/nnunet/`). It plans first; our 3D full-res bundle then takes nnU-Net's plan (patch, batch,
topology, spacing), so both systems run the same network on the same patches. The runs alternate between the
two systems, in turn order reversed every repeat, so that drift of a shared machine hits both. Writes
`B/benchmark.json` and `B/benchmark.md`: each figure for both, with the ratio ours / nnU-Net's and its target.

Figures: preprocessing wall time (fingerprint, plan and preprocessing of every training case), training
seconds per iteration (data loading and augmentation included, after the first epoch), sliding-window inference
per case with and without mirroring, the peak resident memory of that inference process, the convolution
throughput of mirrored inference against a plain Conv3d's peak, test Dice after an equal wall-clock training
budget, and how our inference's time and memory grow with volume size up to 512x512x300 (table and plot).
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
DICE_MARGIN = 0.01  # test Dice at an equal training budget: ours >= nnU-Net's - this
SCALING_SHAPES = [(128, 128, 75), (256, 256, 150), (512, 512, 300)]  # voxels, at SCALING_SPACING (mm)
SCALING_SPACING = (0.8, 0.8, 1.0)
SCALING_LIMIT_MB = 8 * 1024
LABELS = {
    "preprocessing_seconds": "preprocessing, whole dataset (s)",
    "training_seconds_per_iteration": "training, s per iteration",
    "inference_seconds_no_mirroring": "sliding window per case, no mirroring (s)",
    "inference_seconds_mirroring": "sliding window per case, 8-fold mirroring (s)",
    "inference_peak_rss_mb": "peak resident memory of inference (MB)",
    "test_dice_equal_budget": "test Dice after an equal training budget",
}


def nnunet_python() -> str:
    proc = subprocess.run(["bash", "-c", f"source {REPO_ROOT}/scripts/setup_nnunet_env.sh >&2 && echo $NNUNET_PY"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building nnU-Net's environment failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def result_line(log: Path) -> dict:
    """The JSON object a benchmark subprocess prints as its last line."""
    return json.loads(log.read_text().strip().splitlines()[-1])


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

    def __init__(self, dataset_dir: str, output_dir: str, threads: int, schedule: str = "nnunet_v2") -> None:
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
        self.schedule = schedule  # our training recipe in both training runs (nnunet_v2: nnU-Net 2.8.1's own)
        self.inference_settings: dict = {}
        self.gflops: dict[str, list[float]] = {"ours": [], "nnunet": []}

    def nnunet_bin(self, name: str) -> str:
        return str(Path(self.nnunet_py).parent / name)

    # -- preprocessing
    def preprocess_nnunet(self, tag: str) -> float:
        shutil.rmtree(self.plans_dir, ignore_errors=True)
        seconds, _ = run_measured([self.nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                                   "3d_fullres", "-np", str(self.threads), "-npfp", str(self.threads),
                                   "--verify_dataset_integrity"],  # as scripts.plan verifies first
                                  self.logs / f"preprocess_nnunet_{tag}.log")
        self.overrides = plan_overrides(self.plans_dir / "nnUNetPlans.json")
        return seconds

    def preprocess_ours(self, tag: str) -> float:
        """`scripts.plan` (fingerprint and plan) as a command, plus the preprocessing of every training case as the
        training process runs it when it fills its cache. That happens inside the training process, which starts
        anyway, so the subprocess that stands in for it here counts its work, not its interpreter start-up."""
        shutil.rmtree(self.bundle, ignore_errors=True)
        plan, _ = run_measured([sys.executable, "-m", "scripts.plan", "--dataset_dir", str(self.dataset_dir),
                                "--template", str(TEMPLATE), "--output_dir", str(self.bundle)],
                               self.logs / f"plan_ours_{tag}.log")
        log = self.logs / f"preprocess_ours_{tag}.log"
        run_measured([sys.executable, "-m", "scripts.benchmark", "preprocess", str(self.bundle), str(self.dataset_dir),
                      "--overrides", json.dumps(self.overrides)], log)
        return plan + result_line(log)["seconds"]

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
        result = result_line(log)
        self.inference_settings[system] = result["settings"]
        if mirroring:
            self.gflops[system].append(result["gflops"])
        return result["median_seconds"], rss

    # -- training
    def train(self, system: str, epochs: int, iterations: int) -> dict:
        """Train `epochs` x `iterations`: the median seconds per iteration after the first epoch (the warm-up),
        and the training loop's wall time."""
        if system == "nnunet":
            os.environ.update({"BENCH_EPOCHS": str(epochs), "BENCH_ITERATIONS": str(iterations), "BENCH_VAL_ITERATIONS": "1"})
            results = self.nn_root / "results"
            shutil.rmtree(results, ignore_errors=True)
            run_measured([self.nnunet_bin("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "all", "-tr",
                          "nnUNetTrainerBudget", "-device", "cpu"], self.logs / f"train_nnunet_{epochs}x{iterations}.log")
            timing = json.loads(next(results.rglob("bench_timing.json")).read_text())
            epochs_starts, current = [], []
            for t in timing["iteration_starts"]:
                if t is None:
                    epochs_starts.append(current)
                    current = []
                else:
                    current.append(t)
            gaps = [b - a for starts in (epochs_starts[1:] or epochs_starts) for a, b in zip(starts, starts[1:])]
            return {"seconds_per_iteration": statistics.median(gaps), "loop_seconds": timing["train_seconds"],
                    "iterations": epochs * iterations}
        for name in ("models", "logs"):
            shutil.rmtree(self.bundle / name, ignore_errors=True)
        args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                str(self.bundle / "configs" / "train.yaml"), "--bundle_root", str(self.bundle), "--dataset_dir",
                str(self.dataset_dir), "--fold", "all", "--val_interval", "0", "--train#trainer#max_epochs", str(epochs),
                "--iterations_per_epoch", str(iterations), "--schedule", self.schedule] + self.override_args()
        run_measured(args, self.logs / f"train_ours_{epochs}x{iterations}.log")
        history = json.loads((self.bundle / "logs" / "progress.json").read_text())
        return {"seconds_per_iteration": statistics.median(h["iteration_seconds"] for h in (history[1:] or history)),
                "loop_seconds": sum(h["seconds"] for h in history), "iterations": epochs * iterations}

    def override_args(self) -> list[str]:
        return [a for key, value in self.overrides.items() for a in (f"--{key}", json.dumps(value))]

    def test_dice(self, system: str) -> float:
        """Mean foreground Dice on the test set of the model the last `train` left, each system predicting as it
        does by default (sliding window with mirroring), scored by our evaluation."""
        from custom_components.evaluation.report import evaluate_folder

        out = self.out / "predictions" / system
        shutil.rmtree(out, ignore_errors=True)
        if system == "nnunet":
            run_measured([self.nnunet_bin("nnUNetv2_predict"), "-i", str(self.raw / "imagesTs"), "-o", str(out), "-d",
                          str(DATASET_ID), "-c", "3d_fullres", "-f", "all", "-tr", "nnUNetTrainerBudget", "-device", "cpu",
                          "-npp", "1", "-nps", "1", "--disable_progress_bar"], self.logs / "predict_nnunet.log")
            return float(evaluate_folder(out, self.dataset_dir)["mean_dice"])
        run_measured([sys.executable, "-m", "monai.bundle", "run", "evaluate", "--config_file",
                      str(self.bundle / "configs" / "evaluate.yaml"), "--bundle_root", str(self.bundle), "--dataset_dir",
                      str(self.dataset_dir), "--output_dir", str(out)] + self.override_args(), self.logs / "predict_ours.log")
        return float(json.loads((out / "metrics.json").read_text())["mean_dice"])

    def train_for_budget(self, system: str, budget_seconds: float, seconds_per_iteration: float,
                         iterations_per_epoch: int) -> dict:
        """Train for `budget_seconds` of wall clock (as many iterations as this system's measured speed fits in
        it, so that its schedule runs to its end), then score the test set."""
        iterations = max(1, round(budget_seconds / seconds_per_iteration))
        epochs = -(-iterations // iterations_per_epoch)  # epochs of at most iterations_per_epoch, evened out
        trained = self.train(system, epochs, max(1, round(iterations / epochs)))
        return {**trained, "epochs": epochs, "test_dice": round(self.test_dice(system), 4)}

    # -- scaling
    def scale(self, shape: tuple, threads: int) -> dict:
        """Our whole inference of a synthetic CT of `shape` voxels: seconds and peak resident memory."""
        from custom_components.benchmarking.scaling import synth_ct

        name = "x".join(map(str, shape))
        image = synth_ct(shape, SCALING_SPACING, self.out / "scaling" / "images" / f"ct_{name}.nii.gz")
        log = self.logs / f"scaling_{name}.log"
        _, rss = run_measured([sys.executable, "-m", "scripts.benchmark", "scale_case", str(self.bundle), str(image),
                               str(self.out / "scaling" / "predictions"), "--overrides",
                               json.dumps({**self.overrides, "use_mirroring": False}), "--threads", str(threads)], log)
        result = result_line(log)
        image.unlink()  # large, and generated
        return {"shape": list(shape), "voxels": int(shape[0] * shape[1] * shape[2]), "spacing": list(SCALING_SPACING),
                "network_grid": result["network_grid"], "seconds": round(result["seconds"], 2),
                "steps": {k: round(v, 2) for k, v in result["steps"].items()}, "peak_rss_mb": round(rss, 1)}


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


def dice_figure(budget: Mapping) -> dict:
    o, n = budget["ours"]["test_dice"], budget["nnunet"]["test_dice"]
    return {"ours": o, "nnunet": n, "difference": round(o - n, 4)}


def markdown(report: Mapping) -> str:
    m = report["machine"]
    lines = [f"# Benchmark: ours vs nnU-Net v2 ({report['date']})", "",
             f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {report['threads']} torch threads; no GPU. "
             f"torch {report['versions']['torch']}, MONAI {report['versions']['monai']}, nnunetv2 "
             f"{report['versions']['nnunetv2']}. Dataset: {report['dataset']} ({report['training_cases']} training "
             f"cases). Medians of {report['repeats']} alternating runs; training speed: {report['training_budget']}.", "",
             f"Command: `{report['command']}`", "",
             "| figure | ours | nnU-Net v2 | ours / nnU-Net | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for key, f in report["figures"].items():
        target = TARGETS[key]
        met = "yes" if f["ratio"] <= target else f"no (by {f['ratio'] - target:.2f})"
        lines.append(f"| {LABELS[key]} | {f['ours']} | {f['nnunet']} | {f['ratio']} | <= {target} | {met} |")
    dice = report.get("dice")
    if dice:
        met = "yes" if dice["difference"] >= -DICE_MARGIN else f"no (by {-DICE_MARGIN - dice['difference']:.3f})"
        lines.append(f"| {LABELS['test_dice_equal_budget']} | {dice['ours']} | {dice['nnunet']} | "
                     f"{dice['difference']:+.4f} (difference) | >= -{DICE_MARGIN} | {met} |")
        b = report["budget"]
        lines += ["", f"Equal budget: {b['seconds']} s of training each, the iterations each system's measured speed "
                  "fits in it, so that each schedule runs to its end. nnU-Net trains with its own recipe (SGD, lr "
                  f"0.01, poly); ours with `--schedule {b.get('our_schedule', 'nnunet_v2')}`. Each then predicts the "
                  "test set as it does by default (8-fold mirroring) and our evaluation scores both. " + "; ".join(
                      f"{name}: {r['epochs']} x {r['iterations'] // r['epochs']} iterations, training loop "
                      f"{r['loop_seconds']:.0f} s" for name, r in b["runs"].items()) + "."]
    for name, t in report.get("throughput", {}).items():
        lines.append(f"\nThroughput of mirrored inference, {name}: {t['gflops']} GFLOP/s in {t['precision']}, "
                     f"{t['fraction_of_peak']:.0%} of the {t['peak_gflops']} GFLOP/s one large Conv3d reaches here.")
    settings = report.get("inference_settings", {})
    if settings:
        lines += ["", "Inference as each system runs by default: " + "; ".join(
            f"{name}: {', '.join(f'{k} {v}' for k, v in s.items())}" for name, s in settings.items())]
    lines += ["", f"Plan (nnU-Net's, used by both): patch {report['plan']['plan#patch_size']} (x, y, z), batch "
              f"{report['plan']['plan#batch_size']}, widths {report['plan']['plan#features_per_stage']}."]
    rows = report.get("scaling")
    if rows:
        lines += ["", "## Scaling of our inference with volume size", "",
                  f"A synthetic CT at {' x '.join(map(str, SCALING_SPACING))} mm through the bundle's whole inference "
                  "(load, crop, normalise, resample to the plan's spacing, sliding window without mirroring, softmax, "
                  "resample back, argmax, write NIfTI), one process per size; random weights. Limit: "
                  f"{SCALING_LIMIT_MB // 1024} GB resident.", "",
                  "| input (voxels) | network grid | total (s) | sliding window (s) | pre / post-processing (s) | "
                  "peak resident memory (MB) | under 8 GB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            st = r["steps"]
            lines.append(f"| {'x'.join(map(str, r['shape']))} | {'x'.join(map(str, r['network_grid']))} | {r['seconds']} | "
                         f"{st['sliding_window']} | {st['preprocessing']} / {st['postprocessing'] + st['writing']:.2f} | "
                         f"{r['peak_rss_mb']} | {'yes' if r['peak_rss_mb'] <= SCALING_LIMIT_MB else 'no'} |")
        lines += ["", "![scaling](scaling.png)"]
    return "\n".join(lines) + "\n"


def run(dataset_dir: str, output_dir: str, quick: bool = False, repeats: int | None = None, threads: int = 2,
        epochs: int | None = None, iterations: int | None = None, budget_seconds: float | None = None,
        budget_epoch: int | None = None, scaling: bool = True, schedule: str = "nnunet_v2") -> dict:
    repeats = int(repeats or (2 if quick else 3))
    epochs, iterations = int(epochs or (2 if quick else 3)), int(iterations or (6 if quick else 20))
    bench = Bench(dataset_dir, output_dir, threads, schedule)
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
    speed = {}
    for system in ("nnunet", "ours"):
        speed[system] = bench.train(system, epochs, iterations)["seconds_per_iteration"]
        runs["training_seconds_per_iteration"][system].append(round(speed[system], 3))
    # the equal budget gives nnU-Net about 110 iterations (quick) or 300: fewer leave its Dice near 0
    budget = float(budget_seconds or round((110 if quick else 300) * speed["nnunet"]))
    per_epoch = int(budget_epoch or (25 if quick else 50))
    budget_runs = {system: bench.train_for_budget(system, budget, speed[system], per_epoch) for system in ("nnunet", "ours")}
    scaling_rows = [bench.scale(shape, threads) for shape in SCALING_SHAPES] if scaling else []
    if scaling_rows:
        from custom_components.benchmarking.scaling import plot_scaling

        plot_scaling(scaling_rows, bench.out / "scaling.png")
    report = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "threads": threads,
        "versions": versions(bench.nnunet_py), "dataset": str(bench.dataset_dir), "training_cases": len(bench.info.training),
        "repeats": repeats, "training_budget": f"{epochs} epochs x {iterations} iterations, median after epoch 1",
        "command": " ".join(["python -m scripts.benchmark", f"--dataset_dir {dataset_dir}", f"--output_dir {output_dir}"]
                            + (["--quick"] if quick else [])),
        "plan": bench.overrides, "targets": {**TARGETS, "test_dice_difference_at_least": -DICE_MARGIN},
        "inference_settings": bench.inference_settings,
        "throughput": throughput(bench, threads),
        "figures": {k: figure(v["ours"], v["nnunet"]) for k, v in runs.items()},
        "budget": {"seconds": budget, "runs": budget_runs, "our_schedule": schedule}, "dice": dice_figure(budget_runs),
        "scaling": scaling_rows,
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


def scale_case(bundle_root: str, image: str, output_dir: str, overrides: str = "{}", threads: int = 2) -> None:
    """(subprocess of `run`) our whole inference of one image, timed; one JSON line."""
    from custom_components.benchmarking.scaling import time_case_inference

    over = json.loads(overrides) if isinstance(overrides, str) else overrides
    print(json.dumps(time_case_inference(bundle_root, image, over, output_dir, threads)))


def main(dataset_dir: str, output_dir: str, quick: bool = False, repeats: int | None = None, threads: int = 2,
         epochs: int | None = None, iterations: int | None = None, budget_seconds: float | None = None,
         budget_epoch: int | None = None, scaling: bool = True, schedule: str = "nnunet_v2") -> None:
    """Run the benchmark; print benchmark.md."""
    try:
        run(dataset_dir, output_dir, quick, repeats, threads, epochs, iterations, budget_seconds, budget_epoch, scaling,
            schedule)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print((Path(output_dir) / "benchmark.md").read_text())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("preprocess", "infer", "scale_case"):
        fire.Fire({"preprocess": preprocess, "infer": infer, "scale_case": scale_case})
    else:
        fire.Fire(main)
