"""A PNG of a run's metrics per round, read back from its metrics.jsonl."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from fedmm.evaluation.metrics import GLOBAL_CURVES, GROUP_CURVES, label  # noqa: E402
from fedmm.runs.recorder import read_metric_lines  # noqa: E402


def plot_metrics(run_dir: Path, output_path: Path, title: str = "") -> None:
    lines = read_metric_lines(run_dir)
    figure, (ax_global, ax_groups, ax_loss) = plt.subplots(1, 3, figsize=(16, 4.5))
    evaluated = [line for line in lines if "global" in line]
    for name in GLOBAL_CURVES:
        points = [(line["round"], line["global"][name]) for line in evaluated if name in line["global"]]
        if points:
            ax_global.plot(*zip(*points), marker="o", label=label(name))
    ax_global.set(title="global test set", xlabel="round", ylim=(0, 1))
    _legend(ax_global, 8)

    evaluated_locally = [line for line in lines if "hospitals" in line]
    group_keys = sorted({key for line in evaluated_locally for key in line if key.startswith("group/")})
    for key in group_keys:
        for metric in GROUP_CURVES:
            points = [(line["round"], line[key][metric]) for line in evaluated_locally if metric in line.get(key, {})]
            if points:
                ax_groups.plot(*zip(*points), marker=".", label=f"{key.split('/')[1]}: {label(metric)}")
    ax_groups.set(title="hospital local test splits, mean per modality group", xlabel="round", ylim=(0, 1))
    _legend(ax_groups, 7)

    losses = [(line["round"], sum(m["train-loss"] * m["num-paired-used"] for m in trained) /
               sum(m["num-paired-used"] for m in trained))
              for line in lines
              if (trained := [m for m in line["train"].values()
                              if m.get("num-paired-used", 0) > 0 and "train-loss" in m])]
    if losses:
        ax_loss.plot(*zip(*losses), marker=".")
    else:  # DP-SGD: the loss is a statistic of private data and is not published
        ax_loss.text(0.5, 0.5, "no training loss reported", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set(title="training loss (InfoNCE, pair-weighted)", xlabel="round")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output_path, dpi=90)
    plt.close(figure)


def _legend(axes, fontsize: int) -> None:
    if axes.get_legend_handles_labels()[0]:  # a run without such metrics (FedPer: no global model) has none
        axes.legend(fontsize=fontsize)
