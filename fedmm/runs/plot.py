"""A PNG of a run's metrics per round, read back from its metrics.jsonl."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

GLOBAL_CURVES = ("i2t_recall@10", "t2i_recall@10", "i2t_precision@5", "zeroshot_auroc_macro")


def plot_metrics(metrics_path: Path, output_path: Path, title: str = "") -> None:
    lines = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    figure, (ax_global, ax_groups, ax_loss) = plt.subplots(1, 3, figsize=(16, 4.5))
    evaluated = [line for line in lines if "global" in line]
    for name in GLOBAL_CURVES:
        points = [(line["round"], line["global"][name]) for line in evaluated if name in line["global"]]
        if points:
            ax_global.plot(*zip(*points), marker="o", label=name)
    ax_global.set(title="global test set", xlabel="round", ylim=(0, 1))
    ax_global.legend(fontsize=8)

    group_keys = sorted({key for line in evaluated for key in line if key.startswith("group/")})
    for key in group_keys:
        for metric in ("zeroshot_auroc_macro", "report_zeroshot_auroc_macro", "i2t_recall@10"):
            points = [(line["round"], line[key][metric]) for line in evaluated if metric in line.get(key, {})]
            if points:
                ax_groups.plot(*zip(*points), marker=".", label=f"{key.split('/')[1]}: {metric}")
    ax_groups.set(title="hospital local test splits, mean per modality group", xlabel="round", ylim=(0, 1))
    ax_groups.legend(fontsize=7)

    losses = [(line["round"], sum(m["train-loss"] * m["num-paired-used"] for m in trained) /
               sum(m["num-paired-used"] for m in trained))
              for line in lines
              if (trained := [m for m in line["train"].values() if m.get("train-steps", 0) > 0])]
    if losses:
        ax_loss.plot(*zip(*losses), marker=".")
    ax_loss.set(title="training loss (InfoNCE, pair-weighted)", xlabel="round")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output_path, dpi=90)
    plt.close(figure)
