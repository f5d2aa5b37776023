"""The privacy/utility trade-off in one command: one strategy and scenario, DP-SGD at a range of target ε.

Cells (each a run directory under `out`; a finished cell is reused, not rerun):
    eps-<ε>/        sample-level DP-SGD with privacy.sample.target_epsilon=ε, reference-bank negatives
    eps-inf/        the same objective without noise or clipping: what the noise alone costs
    no-dp-in-batch/ the usual CLIP objective without DP: what the DP-compatible objective costs
Outputs: table.csv, table.md (one row per cell) and privacy_utility.png (metrics against ε, per modality
group, with the no-DP references as horizontal lines).
"""

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmm.compose import compose_config
from fedmm.studies.compare import COLUMNS, RunFn, format_cell, write_csv

NO_DP_IN_BATCH = "no-dp-in-batch"
SWEEP_COLUMNS = ("i2t_recall@10", "t2i_recall@10", "zeroshot_auroc_macro", "paired_auroc", "image_only_auroc",
                 "report_only_auroc", "hospital_worst_auroc")
HEADERS = {column: header for column, header, _ in COLUMNS}


def cell_overrides(epsilon: float | None) -> tuple[str, list[str]]:
    """(cell name, overrides): ε = inf is the bank objective without DP; None is CLIP without DP."""
    if epsilon is None:
        return NO_DP_IN_BATCH, ["train.objective=in_batch"]
    if math.isinf(epsilon):
        return "eps-inf", ["train.objective=reference_bank"]
    return f"eps-{epsilon:g}", ["privacy=dp_sgd", f"privacy.sample.target_epsilon={epsilon}"]


def run_privacy_sweep(epsilons: Sequence[float], overrides: Sequence[str], out: Path, run: RunFn,
                      log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or reuse) every cell; write table.csv, table.md and privacy_utility.png under `out`."""
    rows = []
    for epsilon in [*epsilons, None]:
        name, cell = cell_overrides(epsilon)
        run_dir = out / name
        if (run_dir / "summary.json").exists():
            log(f"{name}: reusing {run_dir / 'summary.json'}")
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            summary = run(compose_config([*overrides, *cell, f"run_dir={run_dir}"]))
        privacy = summary.get("privacy", {})
        rows.append({"cell": name, "target_epsilon": "" if epsilon is None else epsilon,
                     "spent_epsilon": privacy.get("max_dp_epsilon"),
                     "noise_multiplier": _mean_noise(privacy),
                     **{column: read(summary) for column, _, read in COLUMNS if column in SWEEP_COLUMNS}})
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "table.csv", ["cell", "target_epsilon", "spent_epsilon", "noise_multiplier", *SWEEP_COLUMNS])
    (out / "table.md").write_text(markdown_table(rows))
    plot_privacy_utility(rows, out / "privacy_utility.png")
    return rows


def _mean_noise(privacy: dict) -> float | None:
    noises = [h["dp_noise_multiplier"] for h in privacy.get("hospitals", {}).values() if "dp_noise_multiplier" in h]
    return sum(noises) / len(noises) if noises else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = [c for c in SWEEP_COLUMNS if any(row[c] is not None for row in rows)]
    lines = ["| cell | target ε | largest ε spent | mean σ | " + " | ".join(HEADERS[c] for c in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for row in rows:
        target = row["target_epsilon"]
        cells = [row["cell"], "–" if target == "" else ("∞" if math.isinf(target) else f"{target:g}"),
                 format_cell(row["spent_epsilon"], ""), format_cell(row["noise_multiplier"], ""),
                 *(format_cell(row[c], c) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_privacy_utility(rows: list[dict[str, Any]], path: Path) -> None:
    """Each metric against ε (log axis; ∞ drawn at the right edge) and the in-batch no-DP run as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [row for row in rows if row["target_epsilon"] != ""]
    finite = [row["target_epsilon"] for row in swept if not math.isinf(row["target_epsilon"])]
    infinity_at = max(finite) * 4 if finite else 1.0
    xs = [infinity_at if math.isinf(row["target_epsilon"]) else row["target_epsilon"] for row in swept]
    reference = next((row for row in rows if row["cell"] == NO_DP_IN_BATCH), None)
    panels = (
        ("retrieval (global test set)", ("i2t_recall@10", "t2i_recall@10")),
        (
            "0-shot AUROC, global and per modality group",
            ("zeroshot_auroc_macro", "paired_auroc", "image_only_auroc", "report_only_auroc", "hospital_worst_auroc"),
        ),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 4.5))
    for ax, (title, columns) in zip(axes, panels):
        for index, column in enumerate(columns):
            points = [(x, row[column]) for x, row in zip(xs, swept) if row[column] is not None]
            if not points:
                continue
            color = f"C{index}"
            ax.plot(*zip(*points), marker="o", color=color, label=HEADERS[column])
            if reference is not None and reference[column] is not None:
                ax.axhline(reference[column], color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ticks = sorted(set(xs))
        ax.set_xticks(
            ticks,
            [
                ("∞" if x == infinity_at and any(math.isinf(r["target_epsilon"]) for r in swept) else f"{x:g}")
                for x in ticks
            ],
        )
        ax.set(title=title, xlabel="target ε (DP-SGD, per hospital, whole run)")
        ax.legend(fontsize=7)
    figure.suptitle("privacy/utility: dotted lines = CLIP in-batch objective without DP")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
