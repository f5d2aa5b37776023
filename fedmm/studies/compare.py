"""Every strategy on each scenario with the same seeds and budget: tables with intervals, and one plot.

The cells are a sweep (`fedmm.studies.sweep.run_grid`): scenario x strategy x seed, each a run directory
under `out/cells/`, reused when finished with the same config. Layout of `out`:
    sweep.json, cells/       the grid and its run directories
    seeds.csv                one row per (scenario, strategy, seed): every column below
    table.csv                one row per (scenario, strategy): each column's mean over seeds, the half-width
                             of its 95% t-interval, and the paired difference from the baseline strategy
                             with its p-value and significance (`fedmm.studies.tables`)
    table.md                 the same, one section per scenario, with the budget each row was given
    differences.md           each strategy minus the baseline, paired by seed: difference ± the half-width of
                             its 95% t-interval, and the p-value (what a sentence ranking two strategies quotes)
    comparison.png           headline metrics per strategy with 95% intervals, one row of panels per scenario
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmm.data.modality import GROUPS
from fedmm.evaluation.metrics import label
from fedmm.studies.stats import INTERVAL_NAME
from fedmm.studies.sweep import run_grid, with_seeds
from fedmm.studies.tables import (
    Column,
    RunFn,
    csv_fields,
    difference_rows,
    legend,
    seeded_rows,
    table_section,
    write_csv,
)

KEYS = ("scenario", "strategy")


def _section_metric(section: str, metric: str) -> Callable[[dict], Any]:
    """Reads `summary[section][metric]` (None where the run has none)."""
    return lambda summary: summary.get(section, {}).get(metric)


def _group_auroc(group: str) -> Callable[[dict], Any]:
    metric = "report_zeroshot_auroc_macro" if group == "report_only" else "zeroshot_auroc_macro"
    return lambda summary: summary.get(f"group/{group}", {}).get(metric)


# Global metrics are on the server's global test set; hospital metrics on each hospital's own test split, of
# the global model and of its own model (personal_), over the hospitals whose split supports the metric.
COLUMNS: tuple[Column, ...] = (
    *(Column(name, label(name), (lambda n: lambda s: s.get(n))(name))
      for name in ("i2t_recall@10", "t2i_recall@10", "i2t_precision@5", "zeroshot_auroc_macro")),
    *(Column(f"{group}_auroc", f"{group}: 0-shot AUROC", _group_auroc(group)) for group in GROUPS),
    *(
        Column(column, header, _section_metric(section, metric))
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
    Column("sample_passes", "sample passes", lambda s: s.get("sample_passes"), compare=False, digits=0),
    Column("upload_kib", "upload KiB/round", lambda s: _kib(s.get("upload_bytes_per_round")), compare=False, digits=0),
    Column("download_kib", "download KiB/round", lambda s: _kib(s.get("download_bytes_per_round")), compare=False,
           digits=0),
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
    seeds: str | None = None,
    baseline: str | None = "fedavg",
) -> list[dict[str, Any]]:
    """Run (or reuse) every (scenario, strategy, seed) cell under `out`; write seeds.csv, table.csv, table.md and
    the plot. `seeds`: comma-separated (default `fedmm.studies.sweep.DEFAULT_SEEDS`, or a `seed=` override);
    `baseline`: the strategy every other is tested against, per scenario (None, or absent: no test)."""
    grid = [*overrides, f"scenario={','.join(scenarios)}", f"strategy={','.join(strategies)}"]
    _, finished = run_grid(with_seeds(grid, seeds), out, run, log)
    # a run is keyed by the scenario and strategy options it was given (an experiment may rename its scenario);
    # a single value is not a sweep axis, so it is not among the cell's values
    given = {"scenario": scenarios[0], "strategy": strategies[0]}
    summaries = [summary | {key: cell.values.get(key, given[key]) for key in KEYS} for cell, summary in finished]
    baseline = baseline if baseline in strategies else None
    write_csv([{**{key: s[key] for key in (*KEYS, "seed")}, **{c.name: c.read(s) for c in COLUMNS}} for s in summaries],
              out / "seeds.csv", [*KEYS, "seed", *(c.name for c in COLUMNS)])
    rows = seeded_rows(summaries, KEYS, COLUMNS,
                       (lambda setting: {**setting, "strategy": baseline}) if baseline else None)
    write_csv(rows, out / "table.csv", csv_fields(KEYS, COLUMNS))
    (out / "table.md").write_text(markdown_table(rows, summaries, baseline))
    if baseline:
        (out / "differences.md").write_text(differences_markdown(rows, baseline))
    plot_comparison(rows, out / "comparison.png")
    return rows


def markdown_table(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], baseline: str | None) -> str:
    """One section per scenario, with the budget of its runs and what the intervals and arrows mean."""
    sections = [legend(baseline)]
    for scenario in dict.fromkeys(row["scenario"] for row in rows):
        members = [row for row in rows if row["scenario"] == scenario]
        runs = [s for s in summaries if s["scenario"] == scenario]
        sections.append(f"### {scenario}\n\n" + table_section(members, "strategy", COLUMNS, runs))
    return "\n\n".join(sections) + "\n"


def differences_markdown(rows: list[dict[str, Any]], baseline: str) -> str:
    """Per scenario, every strategy's paired difference from `baseline` in each compared column."""
    sections = [f"Each cell: strategy minus `{baseline}`, paired by seed: mean difference ± half-width of its "
                f"{INTERVAL_NAME}, and the two-sided p-value of the paired t-test (none where every seed's "
                "difference is the same)."]
    for scenario in dict.fromkeys(row["scenario"] for row in rows):
        members = [row for row in rows if row["scenario"] == scenario]
        sections.append(f"### {scenario}\n\n" + "\n".join(difference_rows(members, "strategy", COLUMNS)))
    return "\n\n".join(sections) + "\n"


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
            errors = [row.get(f"{column}_ci") or 0.0 for row in members]
            ax.barh(names, values, xerr=errors, capsize=2, color="tab:blue", label="global model")
            if column == "hospital_worst_auroc":
                own = [row["hospital_worst_auroc_own"] for row in members]
                positions = [i for i, v in enumerate(own) if v is not None]
                ax.errorbar([own[i] for i in positions], positions, fmt="o", color="tab:orange", zorder=3,
                            xerr=[members[i].get("hospital_worst_auroc_own_ci") or 0.0 for i in positions],
                            label="own model")
                ax.legend(fontsize=7)
            ax.set_title(f"{scenario}: {title} (bars: 95% t-interval)", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
