"""Tables of seeded runs: each row is one setting (e.g. a scenario and a strategy) over its seeds.

A column is (name, header, how to read it from a run's summary). For each setting and column the table
holds the mean over seeds, the half-width of its 95% t-interval (`<column>_ci`) and, against a baseline
setting with the same seeds, the paired difference (`<column>_diff`), its p-value (`<column>_p`) and
whether it is significant (`<column>_sig`: +1 above, -1 below, 0 neither); see `fedmm.studies.stats`.
"""

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmm.config import ExperimentConfig
from fedmm.evaluation.metrics import label as metric_label
from fedmm.studies.stats import INTERVAL_NAME, TEST_NAME, paired_difference, t_interval

RunFn = Callable[[ExperimentConfig], dict[str, Any]]
Read = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Column:
    name: str
    header: str
    read: Read
    compare: bool = True  # mark significant differences from the baseline (not for costs such as bytes)
    digits: int = 3


def write_csv(rows: list[dict[str, Any]], path: Path, fieldnames: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def seeded_rows(
    runs: Sequence[dict[str, Any]],
    keys: Sequence[str],
    columns: Sequence[Column],
    baseline: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> list[dict[str, Any]]:
    """One row per setting: `runs` are summaries (each with its "seed") grouped by their `keys` values, in
    order of first appearance. `baseline(key_values)` names the setting a row is compared with (None: none)."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for summary in runs:
        groups.setdefault(tuple(summary[key] for key in keys), {})[int(summary["seed"])] = summary
    rows = []
    for values, by_seed in groups.items():
        setting = dict(zip(keys, values))
        against = baseline(setting) if baseline is not None else None
        reference = groups.get(tuple(against[key] for key in keys)) if against is not None else None
        row: dict[str, Any] = {**setting, "seeds": len(by_seed), "seed_list": " ".join(map(str, sorted(by_seed)))}
        for column in columns:
            per_seed = {seed: column.read(summary) for seed, summary in by_seed.items()}
            interval = t_interval(list(per_seed.values()))
            row[column.name] = interval.mean if interval else None
            row[f"{column.name}_ci"] = interval.half_width if interval else None
            if reference is None or reference is by_seed or not column.compare:
                continue
            difference = paired_difference(per_seed, {seed: column.read(s) for seed, s in reference.items()})
            if difference is not None:
                row[f"{column.name}_diff"] = difference.difference.mean
                row[f"{column.name}_diff_ci"] = difference.difference.half_width
                row[f"{column.name}_p"] = difference.p_value
                row[f"{column.name}_sig"] = difference.direction
        rows.append(row)
    return rows


def csv_fields(keys: Sequence[str], columns: Sequence[Column]) -> list[str]:
    return [*keys, "seeds", "seed_list",
            *(f"{c.name}{suffix}" for c in columns for suffix in ("", "_ci", "_diff", "_diff_ci", "_p", "_sig"))]


def format_value(row: dict[str, Any], column: Column) -> str:
    """`mean ± half-width`, with ↑ or ↓ where the setting is significantly above or below the baseline."""
    mean, half = row.get(column.name), row.get(f"{column.name}_ci")
    if mean is None:
        return "–"
    text = f"{mean:,.{column.digits}f}" + ("" if half is None else f" ± {half:,.{column.digits}f}")
    return text + {1: " ↑", -1: " ↓"}.get(row.get(f"{column.name}_sig") or 0, "")


def markdown_rows(rows: Sequence[dict[str, Any]], label: str, columns: Sequence[Column]) -> list[str]:
    """A Markdown table of `rows` (first column: `row[label]`); columns no row has are left out."""
    shown = [c for c in columns if any(row.get(c.name) is not None for row in rows)]
    return [
        f"| {label} | seeds | " + " | ".join(c.header for c in shown) + " |",
        "|---|---|" + "---|" * len(shown),
        *(f"| {row[label]} | {row['seeds']} | " + " | ".join(format_value(row, c) for c in shown) + " |"
          for row in rows),
    ]


def format_difference(row: dict[str, Any], column: Column) -> str:
    """The paired difference from the baseline, `difference ± half-width (p = ...)`; – where there is none."""
    difference, half, p_value = (row.get(f"{column.name}{suffix}") for suffix in ("_diff", "_diff_ci", "_p"))
    if difference is None:
        return "–"
    text = f"{difference:+.{column.digits}f}" + ("" if half is None else f" ± {half:.{column.digits}f}")
    return text + ("" if p_value is None else f" (p = {p_value:.2g})")


def difference_rows(rows: Sequence[dict[str, Any]], label: str, columns: Sequence[Column]) -> list[str]:
    """A Markdown table of each row's paired differences from its baseline (rows without one left out)."""
    compared = [row for row in rows if any(row.get(f"{c.name}_diff") is not None for c in columns)]
    shown = [c for c in columns if c.compare and any(row.get(f"{c.name}_diff") is not None for row in compared)]
    return [
        f"| {label} | seeds | " + " | ".join(c.header for c in shown) + " |",
        "|---|---|" + "---|" * len(shown),
        *(f"| {row[label]} | {row['seeds']} | " + " | ".join(format_difference(row, c) for c in shown) + " |"
          for row in compared),
    ]


def legend(baseline: str | None) -> str:
    """What the ± and the arrows of a table mean."""
    text = f"Each cell: mean ± half-width of the {INTERVAL_NAME}."
    if baseline:
        text += f" ↑/↓: significantly above/below `{baseline}` ({TEST_NAME}); no arrow: not significant."
    return text


def budget_line(summaries: list[dict[str, Any]]) -> str:
    """The budget the runs were given: rounds (or the round early stopping selected) and sample passes."""
    rounds = sorted({s["rounds"] for s in summaries})
    evaluated = sorted({s.get("evaluated_round") for s in summaries if s.get("evaluated_round") is not None})
    passes = [s["sample_passes"] for s in summaries if s.get("sample_passes") is not None]
    text = f"Budget: {', '.join(map(str, rounds))} rounds"
    if evaluated != rounds:
        text += f" (the tables show the round each run selected: {evaluated[0]}–{evaluated[-1]})"
    if passes:
        text += (f"; sample passes (one sample through one gradient step) per run: {min(passes):,.0f}"
                 + (f"–{max(passes):,.0f}" if max(passes) != min(passes) else ""))
    chance = summaries[0].get("chance", {}) if summaries else {}
    if chance:
        text += ". Chance on the test set: " + ", ".join(f"{metric_label(name)} {chance[name]:.3f}" for name in
                                                        ("i2t_recall@10", "i2t_precision@5", "zeroshot_auroc_macro")
                                                        if name in chance)
    return text + "."


def table_section(rows: Sequence[dict[str, Any]], label: str, columns: Sequence[Column],
                  summaries: list[dict[str, Any]]) -> str:
    """The budget the runs were given, then their table."""
    return "\n".join([budget_line(summaries), "", *markdown_rows(rows, label, columns)])


def results_table(rows: Sequence[dict[str, Any]], label: str, columns: Sequence[Column],
                  summaries: list[dict[str, Any]], baseline: str | None) -> str:
    """A whole results table: what its ± and arrows mean, the budget, the rows (first column `row[label]`)."""
    return legend(baseline) + "\n\n" + table_section(rows, label, columns, summaries)
