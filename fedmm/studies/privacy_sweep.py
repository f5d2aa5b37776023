"""The privacy/utility trade-off in one command: one strategy and scenario, DP-SGD at a range of target ε,
over several seeds.

Settings (the `variant` axis of a sweep grid, `fedmm.studies.sweep.run_grid`, times the seeds; each cell a
run directory under `out/cells/`, reused when finished with the same config):
    eps-<ε>         sample-level DP-SGD with privacy.sample.target_epsilon=ε, reference-bank negatives
    eps-inf         the same objective without noise or clipping: what the noise alone costs (the baseline
                    every ε is tested against, paired by seed)
    no-dp-in-batch  the usual CLIP objective without DP: what the DP-compatible objective costs
Outputs: seeds.csv (one row per cell), table.csv and table.md (one row per setting: mean, 95% t-interval
and the paired test against eps-inf, `fedmm.studies.tables`) and privacy_utility.png (metrics against ε
with their intervals, per modality group, with the no-DP reference as dotted lines).
"""

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmm.studies.compare import COLUMNS
from fedmm.studies.sweep import VARIANT_AXIS, run_grid, with_seeds
from fedmm.studies.tables import Column, RunFn, csv_fields, results_table, seeded_rows, write_csv

NO_DP_IN_BATCH = "no-dp-in-batch"
NOISE_FREE = "eps-inf"
KEYS = ("cell", "target_epsilon")
SWEEP_COLUMNS = ("i2t_recall@10", "t2i_recall@10", "zeroshot_auroc_macro", "paired_auroc", "image_only_auroc",
                 "report_only_auroc", "hospital_worst_auroc")
HEADERS = {column.name: column.header for column in COLUMNS}
PRIVACY_COLUMNS = (
    Column("spent_epsilon", "largest ε spent", lambda s: s.get("privacy", {}).get("max_dp_epsilon"), compare=False,
           digits=2),
    Column("noise_multiplier", "mean σ", lambda s: _mean_noise(s.get("privacy", {})), compare=False, digits=2),
    *(column for column in COLUMNS if column.name in SWEEP_COLUMNS),
)


def cell_overrides(epsilon: float | None) -> tuple[str, list[str]]:
    """(setting name, overrides): ε = inf is the bank objective without DP; None is CLIP without DP."""
    if epsilon is None:
        return NO_DP_IN_BATCH, ["train.objective=in_batch"]
    if math.isinf(epsilon):
        return NOISE_FREE, ["train.objective=reference_bank"]
    return f"eps-{epsilon:g}", ["privacy=dp_sgd", f"privacy.sample.target_epsilon={epsilon}"]


def run_privacy_sweep(epsilons: Sequence[float], overrides: Sequence[str], out: Path, run: RunFn,
                      log: Callable[[str], None] = print, seeds: str | None = None) -> list[dict[str, Any]]:
    """Run (or reuse) every (setting, seed) cell; write seeds.csv, table.csv, table.md and privacy_utility.png."""
    settings = {" ".join(cell): (name, epsilon) for epsilon in [*epsilons, None]
                for name, cell in [cell_overrides(epsilon)]}
    _, finished = run_grid(with_seeds(overrides, seeds), out, run, log, variants=list(settings))
    runs = []
    for cell, summary in finished:
        name, epsilon = settings[cell.values[VARIANT_AXIS]]
        runs.append(summary | {"cell": name, "target_epsilon": "" if epsilon is None else epsilon})
    write_csv([{"cell": r["cell"], "seed": r["seed"], "target_epsilon": r["target_epsilon"],
                **{c.name: c.read(r) for c in PRIVACY_COLUMNS}} for r in runs],
              out / "seeds.csv", ["cell", "seed", "target_epsilon", *(c.name for c in PRIVACY_COLUMNS)])
    tested = any(r["cell"] == NOISE_FREE for r in runs)  # every ε against the same objective without noise
    rows = seeded_rows(runs, KEYS, PRIVACY_COLUMNS,
                       (lambda setting: {"cell": NOISE_FREE, "target_epsilon": math.inf}) if tested else None)
    write_csv(rows, out / "table.csv", csv_fields(KEYS, PRIVACY_COLUMNS))
    (out / "table.md").write_text(markdown_table(rows, runs, NOISE_FREE if tested else None))
    plot_privacy_utility(rows, out / "privacy_utility.png")
    return rows


def _mean_noise(privacy: dict) -> float | None:
    noises = [h["dp_noise_multiplier"] for h in privacy.get("hospitals", {}).values() if "dp_noise_multiplier" in h]
    return sum(noises) / len(noises) if noises else None


def markdown_table(rows: list[dict[str, Any]], runs: list[dict[str, Any]], baseline: str | None) -> str:
    for row in rows:
        target = row["target_epsilon"]
        row["setting"] = f"{row['cell']} (target ε " + ("–" if target == "" else "∞" if math.isinf(target)
                                                         else f"{target:g}") + ")"
    return results_table(rows, "setting", PRIVACY_COLUMNS, runs, baseline) + "\n"


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
            points = [(x, row[column], row.get(f"{column}_ci") or 0.0) for x, row in zip(xs, swept)
                      if row.get(column) is not None]
            if not points:
                continue
            color = f"C{index}"
            where, means, errors = zip(*points)
            ax.errorbar(where, means, yerr=errors, marker="o", capsize=3, color=color, label=HEADERS[column])
            if reference is not None and reference.get(column) is not None:
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
    figure.suptitle("privacy/utility: mean over seeds, bars = 95% t-interval; dotted lines = CLIP in-batch objective "
                    "without DP")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
