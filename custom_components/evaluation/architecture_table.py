"""The architecture comparison's outputs: one record per template (test Dice per class, parameters, training and
inference time, peak memory) as a Markdown table and a bar chart."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from custom_components.io_utils import atomic_path


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def class_names(records: Sequence[Mapping]) -> list[str]:
    """The foreground classes, in the order the first record lists them."""
    names: list[str] = []
    for r in records:
        names += [n for n in r["dice_per_class"] if n not in names]
    return names


def comparison_markdown(records: Sequence[Mapping], settings: Mapping) -> str:
    """A Markdown table, one row per template, and a line that says how the numbers were made."""
    classes = class_names(records)
    head = (["template", "network", "parameters", "mean Dice"] + [f"Dice {c}" for c in classes]
            + ["training (s)", "inference (s/case, median)", "peak RAM training (MB)", "peak RAM inference (MB)",
               "peak GPU training (MB)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        row = ([r["template"], r["network"], f"{r['parameters']:,}", _fmt(r["mean_dice"], ".4f")]
               + [_fmt(r["dice_per_class"].get(c), ".4f") for c in classes]
               + [_fmt(r["training_seconds"], ".0f"), _fmt(r["inference_seconds_per_case"], ".2f"),
                  _fmt(r["peak_rss_training_mb"], ".0f"), _fmt(r["peak_rss_inference_mb"], ".0f"),
                  _fmt(r.get("peak_gpu_training_mb"), ".0f")])
        lines.append("| " + " | ".join(row) + " |")
    budget = (f"{settings['epochs']} epochs x {settings['iterations_per_epoch']} iterations, "
              f"on all {settings['num_training_cases']} training cases")
    notes = [
        "",
        f"Dataset `{settings['dataset_dir']}`; every template planned on it and trained with the same budget "
        f"({budget}); test Dice on its {settings['num_test_cases']} `imagesTs` cases, scored in their own geometry.",
        "Training time is the wall time of the training command (start-up and caching included); inference time is "
        "the median per case from loading to the written prediction; peak RAM is the resident set of the command's "
        "main process (its data-loader workers are not counted).",
        f"Machine: {settings['machine']}.",
    ]
    if settings.get("overrides"):
        notes.append(f"Overrides: `{dict(settings['overrides'])}`.")
    return "\n".join(lines + notes) + "\n"


def plot_comparison(records: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Grouped bars of test Dice (each class and the mean) per template, beside training time per template."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = class_names(records)
    series = classes + ["mean"]
    names = [r["template"] for r in records]
    x = np.arange(len(records))
    width = 0.8 / len(series)
    fig, (ax_dice, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for i, s in enumerate(series):
        values = [(r["mean_dice"] if s == "mean" else r["dice_per_class"].get(s)) for r in records]
        ax_dice.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in values], width, label=s)
    ax_dice.set_xticks(x, names, rotation=20, ha="right")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_ylabel("test Dice")
    ax_dice.legend(fontsize="small", loc="lower right")
    ax_time.bar(x, [r["training_seconds"] / 60 for r in records], color="gray")
    ax_time.set_xticks(x, names, rotation=20, ha="right")
    ax_time.set_ylabel("training (min)")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
