"""Turn a sweep (`fedmm sweep`) into a report: `report.md` with its PNG figures, next to the sweep's tables.

The x axis is one swept knob (by default the first numeric axis other than `seed`); every other axis but
`seed` names a variant (e.g. `strategy=fedavg, missing=prototype`); seeds give the spread. Figures:
    <metric>_vs_x.png      each chosen metric against x, per variant: mean over seeds, band = the 95% t-interval
    hospital_heatmap.png   hospital x variant, each hospital's 0-shot AUROC (the model it uses, the modality
                           it holds), mean over seeds; one panel per x value
    group_bars.png         the same AUROC averaged per modality group, per variant; one panel per x value
Tables: each metric (mean ± the half-width of its 95% t-interval over seeds, `fedmm.studies.stats`) per
variant and x; fairness per variant and x: the mean, the
worst hospital's AUROC (and which hospital it most often is) and the spread between hospitals. With a
`baseline` variant, every other variant's value is tested against the baseline's at the same x, paired by
seed, and marked ↑/↓ where the difference is significant (`fedmm.studies.tables.legend`).
"""

import csv
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmm.config import ConfigError
from fedmm.data.modality import GROUPS
from fedmm.evaluation.metrics import REPORT_DEFAULT
from fedmm.studies.stats import paired_difference, t_interval
from fedmm.studies.sweep import HOSPITAL_METRIC, SEED_AXIS, VARIANT_AXIS
from fedmm.studies.tables import legend


def read_table(path: Path) -> list[dict[str, Any]]:
    """A CSV written by the sweep, with numbers as floats and empty cells as None."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `fedmm sweep --out {path.parent} ...` first")
    with open(path, newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(value: str) -> Any:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def choose_x(axes: dict[str, list[str]], requested: str | None) -> str | None:
    if requested is not None:
        if requested not in axes:
            raise ConfigError(f"--x {requested!r} is not an axis of this sweep; its axes: {list(axes)}")
        return requested
    numeric = [key for key, values in axes.items() if key != SEED_AXIS and all(
        isinstance(_number(value), float) for value in values)]
    return numeric[0] if numeric else None


def variant_of(row: dict[str, Any], keys: Sequence[str]) -> str:
    return (
        ", ".join(_text(row[key]) if key == VARIANT_AXIS else f"{key}={_text(row[key])}" for key in keys) or "all cells"
    )


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


DEFAULT_METRICS = REPORT_DEFAULT
# The hospital columns the paired differences add to the report's metrics: the fairness table's mean and worst, and
# the unimodal groups' hospitals (paired hospitals are most of the mean)
DIFFERENCE_HOSPITAL_COLUMNS = (f"mean_{HOSPITAL_METRIC}", f"worst_{HOSPITAL_METRIC}",
                               f"image_only_{HOSPITAL_METRIC}", f"report_only_{HOSPITAL_METRIC}")


def load_sweep(sweep_dir: Path, metrics: Sequence[str], x: str | None, baseline: str | None
               ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None, list[str], list]:
    """A finished sweep's sweep.json and results.csv rows, each row labelled with its variant and x (see
    `label_rows`), after checking that the requested metrics, x and baseline exist; then the variants
    in order and the sorted values of x."""
    if not (sweep_dir / "sweep.json").is_file():
        raise ConfigError(f"{sweep_dir} holds no sweep.json: run `fedmm sweep --out {sweep_dir} ...` first")
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    rows = read_table(sweep_dir / "results.csv")
    for metric in metrics:
        if rows and metric not in rows[0]:
            raise ConfigError(f"--metric {metric!r} is not in results.csv; its columns: {list(rows[0])[1:]}")
    x = choose_x(sweep["axes"], x)
    rows = label_rows(rows, sweep["axes"], x)
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    xs = sorted({row["x"] for row in rows}, key=lambda v: (v is None, v if isinstance(v, float) else str(v)))
    if baseline is not None and baseline not in variants:
        raise ConfigError(f"--baseline {baseline!r} is not a variant of this sweep; its variants: {variants}")
    return sweep, rows, x, variants, xs


def label_rows(rows: list[dict[str, Any]], axes: dict[str, list[str]], x: str | None) -> list[dict[str, Any]]:
    """Each row's `variant` (every swept axis but x and the seed, as the report names it) and `x`."""
    variant_keys = [key for key in axes if key not in (x, SEED_AXIS)]
    for row in rows:
        row["variant"] = variant_of(row, variant_keys)
        row["x"] = row[x] if x else None
    return rows


def write_report(sweep_dir: Path, metrics: Sequence[str] = DEFAULT_METRICS, x: str | None = None,
                 baseline: str | None = None, differences: str | None = None) -> Path:
    """Write report.md and its figures into `sweep_dir`; returns the report's path. `baseline`: a variant
    (as the report names it) that every other variant is tested against, at each x, paired by seed.
    `differences` ("FROM,TO", two values of x): add the paired differences with their intervals and p-values
    (`difference_tables`; against the baseline too when there is one), for the metrics and the hospital columns."""
    sweep, rows, x, variants, xs = load_sweep(sweep_dir, metrics, x, baseline)
    paired = [] if differences is None else [  # checked before any figure is written
        "## Paired differences", "",
        paired_difference_tables(rows, variants, xs, x, differences, baseline,
                                 [*metrics, *DIFFERENCE_HOSPITAL_COLUMNS]), ""]
    hospitals = label_rows(read_table(sweep_dir / "hospitals.csv"), sweep["axes"], x)
    axes = sweep["axes"]

    for metric in metrics:
        plot_metric_vs_x(rows, variants, xs, metric, x, sweep_dir / f"{_slug(metric)}_vs_x.png")
    plot_hospital_heatmap(hospitals, variants, xs, x, sweep_dir / "hospital_heatmap.png")
    plot_group_bars(rows, variants, xs, x, sweep_dir / "group_bars.png")
    seeds = len(axes.get(SEED_AXIS, [None]))
    command = " ".join(
        [
            "fedmm sweep --out",
            str(sweep_dir),
            *sweep["fixed"],
            *(f"{key}={','.join(values)}" for key, values in axes.items() if key != VARIANT_AXIS),
            *(f"--variant '{value}'" for value in axes.get(VARIANT_AXIS, [])),
        ]
    )
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"Reproduce: `{command}`, then `fedmm report {sweep_dir}"
        + "".join(f" --metric {metric}" for metric in metrics)
        + (f" --x {x}" if x else "")
        + (f" --baseline '{baseline}'" if baseline else "")
        + (f" --differences {differences}`" if differences else "`"),
        "",
        f"{len(rows)} cells; x = `{x or '–'}`; variants: {len(variants)}; seeds per point: {seeds}. "
        f"`{HOSPITAL_METRIC}`: each hospital's 0-shot AUROC on its own test split, of the model it uses (its own "
        "under a personalized strategy, else the global one), for the modality it holds (images where it has "
        "any, else reports).",
        "",
        legend(baseline),
        "",
        *(
            line
            for metric in metrics
            for line in (
                f"## {metric} (global test set)",
                "",
                metric_table(rows, variants, xs, metric, x, baseline),
                "",
                f"![{metric} against {x}]({_slug(metric)}_vs_x.png)",
                "",
            )
        ),
        "## Fairness between hospitals",
        "",
        fairness_table(rows, variants, xs, x, baseline),
        "",
        "![hospital x variant](hospital_heatmap.png)",
        "",
        "![per modality group](group_bars.png)",
        "",
        *paired,
    ]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _slug(metric: str) -> str:
    return metric.replace("@", "_at_")


def _values(rows: list[dict], variant: str, x: Any, column: str) -> list[float]:
    return [row[column] for row in rows if row["variant"] == variant and row["x"] == x and row[column] is not None]


def by_seed(rows: list[dict], variant: str, x: Any, column: str) -> dict[int, float | None]:
    """One variant's `column` at one value of x, keyed by seed: what `paired_difference` pairs."""
    return {int(row[SEED_AXIS]): row.get(column) for row in rows
            if row["variant"] == variant and row["x"] == x and row.get(SEED_AXIS) is not None}


def difference_tables(sweep_dir: Path, x: str | None, between: str, baseline: str | None,
                      metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """The paired differences behind a report's sentences, as two markdown tables with 95% t-intervals and
    p-values: along x, each variant's value at the second of `between` ("FROM,TO") minus the first; and, with a
    `baseline`, each variant minus it at every value of x. Both paired by seed."""
    _, rows, x, variants, xs = load_sweep(sweep_dir, metrics, x, baseline)
    return paired_difference_tables(rows, variants, xs, x, between, baseline, metrics)


def paired_difference_tables(rows: list[dict], variants: list[str], xs: list, x: str | None, between: str,
                             baseline: str | None, metrics: Sequence[str]) -> str:
    """`difference_tables` on a sweep already loaded (`load_sweep`)."""
    if x is None:
        raise ConfigError("--differences needs an x: this sweep has no numeric axis but the seed; name one with --x")
    parts = between.split(",")
    start, end = (_number(part.strip()) for part in parts) if len(parts) == 2 else (None, None)
    if start not in xs or end not in xs:
        raise ConfigError(f"--differences {between!r}: give two values of {x} as FROM,TO; this sweep has "
                          f"{', '.join(_text(v) for v in xs)}")

    def cell(variant: str, value: Any, reference: str, reference_value: Any, metric: str) -> str:
        difference = paired_difference(by_seed(rows, variant, value, metric),
                                       by_seed(rows, reference, reference_value, metric))
        if difference is None:
            return "– | –"
        p_value = "–" if difference.p_value is None else f"{difference.p_value:.3g}"
        return f"{difference.difference.format()} | {p_value}"

    lines = [f"Along x: {x} = {_text(end)} minus {_text(start)}, paired by seed", "",
             "| variant | metric | difference (95% t-interval) | p |", "|---|---|---|---|"]
    lines += [f"| {variant} | {metric} | {cell(variant, end, variant, start, metric)} |"
              for variant in variants for metric in metrics]
    if baseline is None:
        return "\n".join(lines)
    lines += ["", f"Against `{baseline}` at the same {x}, paired by seed", "",
              f"| variant | metric | {' | '.join(f'{_text(v)}: difference | p' for v in xs)} |",
              "|---|---|" + "---|---|" * len(xs)]
    lines += [f"| {variant} | {metric} | " + " | ".join(cell(variant, v, baseline, v, metric) for v in xs) + " |"
              for variant in variants if variant != baseline for metric in metrics]
    return "\n".join(lines)


def _mean_ci(rows: list[dict], variant: str, x: Any, column: str, baseline: str | None = None) -> str:
    """mean ± half-width over seeds, with ↑/↓ where it differs significantly from `baseline` at the same x."""
    interval = t_interval(_values(rows, variant, x, column))
    if interval is None:
        return "–"
    text = interval.format()
    if baseline is None or variant == baseline:
        return text
    test = paired_difference(by_seed(rows, variant, x, column), by_seed(rows, baseline, x, column))
    return text + {1: " ↑", -1: " ↓"}.get(test.direction if test is not None else 0, "")


def metric_table(rows: list[dict], variants: list[str], xs: list, metric: str, x: str | None,
                 baseline: str | None = None) -> str:
    lines = [
        "| variant | " + " | ".join(f"{x}={_text(v)}" if x else "value" for v in xs) + " |",
        "|---|" + "---|" * len(xs),
    ]
    for variant in variants:
        lines.append(f"| {variant} | " + " | ".join(_mean_ci(rows, variant, v, metric, baseline) for v in xs) + " |")
    return "\n".join(lines)


def fairness_table(rows: list[dict], variants: list[str], xs: list, x: str | None, baseline: str | None = None) -> str:
    lines = [
        f"| variant | {x or ''} | mean hospital AUROC | worst hospital AUROC | worst hospital (most often) | "
        "spread (best - worst) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in variants:
        for v in xs:
            members = [row for row in rows if row["variant"] == variant and row["x"] == v]
            worst = Counter(
                f"{int(row['worst_hospital'])} ({row['worst_hospital_group']})"
                for row in members
                if row["worst_hospital"] is not None
            ).most_common(1)
            lines.append(
                f"| {variant} | {_text(v) if x else ''} | "
                f"{_mean_ci(rows, variant, v, f'mean_{HOSPITAL_METRIC}', baseline)} | "
                f"{_mean_ci(rows, variant, v, f'worst_{HOSPITAL_METRIC}', baseline)} | "
                f"{worst[0][0] if worst else '–'} | "
                f"{_mean_ci(rows, variant, v, f'spread_{HOSPITAL_METRIC}', baseline)} |"
            )
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_x(rows: list[dict], variants: list[str], xs: list, metric: str, x: str | None, path: Path) -> None:
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7.5, 4.5))
    numeric = x is not None and all(isinstance(v, float) for v in xs)
    positions = xs if numeric else list(range(len(xs)))
    for index, variant in enumerate(variants):
        points = [(p, _values(rows, variant, v, metric)) for p, v in zip(positions, xs)]
        points = [(p, values) for p, values in points if values]
        if not points:
            continue
        where = [p for p, _ in points]
        intervals = [t_interval(v) for _, v in points]
        ax.plot(where, [i.mean for i in intervals], marker="o", color=f"C{index}", label=variant)
        ax.fill_between(where, [i.mean if i.low is None else i.low for i in intervals],
                        [i.mean if i.high is None else i.high for i in intervals], color=f"C{index}", alpha=0.15)
    if not numeric:
        ax.set_xticks(positions, [_text(v) for v in xs])
    ax.set(xlabel=x or "", ylabel=metric, title=f"{metric} (global test set); band: 95% t-interval over seeds")
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_hospital_heatmap(hospitals: list[dict], variants: list[str], xs: list, x: str | None, path: Path) -> None:
    plt = _pyplot()
    figure, axes = _panels(plt, len(xs), width=1.8 + 0.9 * len(variants), height=5.0)
    for ax, v in zip(axes, xs):
        members = [row for row in hospitals if row["x"] == v]
        ids = sorted({int(row["hospital"]) for row in members})
        group = {
            h: Counter(row["group"] for row in members if int(row["hospital"]) == h).most_common(1)[0][0] for h in ids
        }
        grid = [
            [
                _mean_or_nan(
                    [
                        row[HOSPITAL_METRIC]
                        for row in members
                        if int(row["hospital"]) == h and row["variant"] == variant and row[HOSPITAL_METRIC] is not None
                    ]
                )
                for variant in variants
            ]
            for h in ids
        ]
        image = ax.imshow(grid, cmap="viridis", vmin=0.4, vmax=0.9, aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                if value == value:
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="black" if value > 0.75 else "white",
                    )
        ax.set_yticks(range(len(ids)), [f"{h} ({group[h]})" for h in ids], fontsize=7)
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=6)
        ax.set_title(f"{x}={_text(v)}" if x else "", fontsize=8)
    figure.colorbar(image, ax=axes, label=HOSPITAL_METRIC)
    figure.suptitle("each hospital's 0-shot AUROC (mean over seeds)", fontsize=9)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_group_bars(rows: list[dict], variants: list[str], xs: list, x: str | None, path: Path) -> None:
    plt = _pyplot()
    figure, axes = _panels(plt, len(xs), width=1.5 + 1.0 * len(variants), height=4.5)
    width = 0.8 / len(GROUPS)
    for ax, v in zip(axes, xs):
        for g, group in enumerate(GROUPS):
            heights = [_mean_or_nan(_values(rows, variant, v, f"{group}_{HOSPITAL_METRIC}")) for variant in variants]
            ax.bar([i + (g - 1) * width for i in range(len(variants))], heights, width, label=group, color=f"C{g}")
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=6)
        ax.set_ylim(0.4, 0.9)
        ax.set_title(f"{x}={_text(v)}" if x else "", fontsize=8)
    axes[0].set_ylabel(f"group mean of {HOSPITAL_METRIC}")
    axes[0].legend(fontsize=7)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _panels(plt, count: int, width: float, height: float) -> tuple[Any, list]:
    """One panel per x value, two per row."""
    columns = min(2, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for extra in flat[count:]:
        extra.set_visible(False)
    return figure, flat[:count]


def _mean_or_nan(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
