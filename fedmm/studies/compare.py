"""Every strategy on each scenario with the same seed and budget: one table (CSV, Markdown) and one plot.

Layout of `out`:
    <scenario>/<strategy>/   one run directory per cell (a finished cell is reused, not rerun)
    table.csv                one row per (scenario, strategy), every column below
    table.md                 the same, one section per scenario
    comparison.png           headline metrics per strategy, one row of panels per scenario
"""

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmm.compose import compose_config
from fedmm.config import ExperimentConfig
from fedmm.evaluation.metrics import label

RunFn = Callable[[ExperimentConfig], dict[str, Any]]
GROUPS = ("paired", "image_only", "report_only")  # a hospital counts in its dominant modality group

def _section_metric(section: str, metric: str) -> Callable[[dict], Any]:
    """Reads `summary[section][metric]` (None where the run has none)."""
    return lambda summary: summary.get(section, {}).get(metric)


# (column, header, how to read it from a summary). Global metrics are on the server's global test set;
# hospital metrics on each hospital's own test split, of the global model and of its own model (personal_).
COLUMNS: tuple[tuple[str, str, Callable[[dict], Any]], ...] = (
    *(
        (name, label(name), (lambda n: lambda s: s.get(n))(name))  # global metrics, straight from the summary
        for name in ("i2t_recall@10", "t2i_recall@10", "i2t_precision@5", "zeroshot_auroc_macro")
    ),
    *(
        (
            f"{group}_auroc",
            f"{group}: 0-shot AUROC",
            (
                lambda g: (
                    lambda s: s.get(f"group/{g}", {}).get(
                        "report_zeroshot_auroc_macro" if g == "report_only" else "zeroshot_auroc_macro"
                    )
                )
            )(group),
        )
        for group in GROUPS
    ),
    *(
        (column, header, _section_metric(section, metric))
        for column, header, section, metric in (
            ("hospital_mean_auroc", "hospitals mean AUROC (global)", "hospital_mean", "zeroshot_auroc_macro"),
            ("hospital_worst_auroc", "hospitals worst AUROC (global)", "hospital_worst", "zeroshot_auroc_macro"),
            ("hospital_mean_auroc_own", "hospitals mean AUROC (own)", "hospital_mean",
             "personal_zeroshot_auroc_macro"),
            ("hospital_worst_auroc_own", "hospitals worst AUROC (own)", "hospital_worst",
             "personal_zeroshot_auroc_macro"),
            ("hospital_mean_recall_own", "hospitals mean i2t R@10 (own)", "hospital_mean", "personal_i2t_recall@10"),
        )
    ),
    ("upload_kib", "upload KiB/round", lambda s: _kib(s.get("upload_bytes_per_round"))),
    ("download_kib", "download KiB/round", lambda s: _kib(s.get("download_bytes_per_round"))),
)


def _kib(value: float | None) -> float | None:
    return None if value is None else value / 1024


def run_comparison(
    strategies: Sequence[str],
    scenarios: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    run: RunFn,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or reuse) every (scenario, strategy) cell under `out`; write table.csv, table.md and the plot."""
    rows = []
    for scenario in scenarios:
        for strategy in strategies:
            run_dir = out / scenario / strategy
            summary_path = run_dir / "summary.json"
            if summary_path.exists():  # finished cells are kept, not rerun
                log(f"{scenario}/{strategy}: reusing {summary_path}")
                summary = json.loads(summary_path.read_text())
            else:
                summary = run(
                    compose_config([*overrides, f"scenario={scenario}", f"strategy={strategy}", f"run_dir={run_dir}"])
                )
            rows.append(
                {"scenario": scenario, "strategy": strategy, **{column: read(summary) for column, _, read in COLUMNS}}
            )
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "table.csv", ["scenario", "strategy", *(c for c, _, _ in COLUMNS)])
    (out / "table.md").write_text(markdown_table(rows))
    plot_comparison(rows, out / "comparison.png")
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path, fieldnames: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One section per scenario; columns no strategy has (e.g. a group absent from the scenario) are dropped."""
    sections = []
    for scenario in dict.fromkeys(row["scenario"] for row in rows):
        members = [row for row in rows if row["scenario"] == scenario]
        columns = [(c, header) for c, header, _ in COLUMNS if any(row[c] is not None for row in members)]
        lines = [
            f"### {scenario}",
            "",
            "| strategy | " + " | ".join(h for _, h in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for row in members:
            cells = [format_cell(row[c], c) for c, _ in columns]
            lines.append(f"| {row['strategy']} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def format_cell(value: Any, column: str) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if column.endswith("_kib") else f"{value:.3f}"


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(row["scenario"] for row in rows))
    panels = (
        ("i2t_recall@10", "global i2t R@10"),
        ("zeroshot_auroc_macro", "global 0-shot AUROC"),
        ("hospital_worst_auroc", "worst hospital AUROC (global / own model)"),
        ("upload_kib", "upload KiB/round"),
    )
    figure, axes = plt.subplots(len(scenarios), len(panels), figsize=(18, 0.35 * len(rows) + 3), squeeze=False)
    for row_axes, scenario in zip(axes, scenarios):
        members = [row for row in rows if row["scenario"] == scenario]
        names = [row["strategy"] for row in members]
        for ax, (column, title) in zip(row_axes, panels):
            values = [row[column] if row[column] is not None else 0.0 for row in members]
            ax.barh(names, values, color="tab:blue", label="global model")
            if column == "hospital_worst_auroc":
                own = [row["hospital_worst_auroc_own"] for row in members]
                positions = [i for i, v in enumerate(own) if v is not None]
                ax.scatter([own[i] for i in positions], positions, color="tab:orange", zorder=3, label="own model")
                ax.legend(fontsize=7)
            ax.set_title(f"{scenario}: {title}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
