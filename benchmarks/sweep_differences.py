"""The paired differences behind a sweep report's sentences, with their 95% t-intervals and p-values.

    python benchmarks/sweep_differences.py outputs/imbalance-study --x scenario.hospital_mix.unimodal \
        --shares 0,0.75 --baseline strategy=fedavg [--metric M ...]

Reads the sweep's `results.csv` (one row per cell and seed, `fedmm sweep`) and prints two markdown tables,
every difference paired by seed (`fedmm.studies.stats.paired_difference`):
- along x: each variant's value at the last of `--shares` minus its value at the first;
- against the baseline: each variant minus `--baseline` at every value of x.
`fedmm report` marks the second kind with ↑/↓; this prints the sizes and p-values the docs quote.
"""

import argparse
import json
from pathlib import Path

from fedmm.evaluation.metrics import REPORT_DEFAULT
from fedmm.studies.report import read_table, variant_of
from fedmm.studies.stats import paired_difference
from fedmm.studies.sweep import SEED_AXIS

HOSPITAL_COLUMNS = ("mean_hospital_auroc", "worst_hospital_auroc", "image_only_hospital_auroc",
                    "report_only_hospital_auroc")


def by_seed(rows: list[dict], variant: str, x: str, value, metric: str) -> dict[int, float | None]:
    return {int(row[SEED_AXIS]): row.get(metric) for row in rows if row["variant"] == variant and row[x] == value}


def describe(difference) -> str:
    if difference is None:
        return "– | –"
    p_value = "–" if difference.p_value is None else f"{difference.p_value:.3g}"
    return f"{difference.difference.format()} | {p_value}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--x", required=True, help="the swept axis, a column of results.csv")
    parser.add_argument("--shares", required=True, help="FROM,TO: the two values of x to difference")
    parser.add_argument("--baseline", required=True, help="a variant as the report names it")
    parser.add_argument("--metric", action="append", default=None)
    args = parser.parse_args()
    rows = read_table(args.sweep_dir / "results.csv")
    axes = json.loads((args.sweep_dir / "sweep.json").read_text())["axes"]
    for row in rows:  # a variant as the report names it: every axis but x and the seed
        row["variant"] = variant_of(row, [key for key in axes if key not in (args.x, SEED_AXIS)])
    metrics = args.metric or [*REPORT_DEFAULT, *HOSPITAL_COLUMNS]
    start, end = (float(value) for value in args.shares.split(","))
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    xs = sorted({row[args.x] for row in rows})
    print(f"Along x: {args.x} = {end:g} minus {start:g}, paired by seed\n")
    print("| variant | metric | difference (95% t-interval) | p |\n|---|---|---|---|")
    for variant in variants:
        for metric in metrics:
            difference = paired_difference(by_seed(rows, variant, args.x, end, metric),
                                           by_seed(rows, variant, args.x, start, metric))
            print(f"| {variant} | {metric} | {describe(difference)} |")
    print(f"\nAgainst `{args.baseline}` at the same {args.x}, paired by seed\n")
    print(f"| variant | metric | {' | '.join(f'{x:g}: difference | p' for x in xs)} |")
    print("|---|---|" + "---|---|" * len(xs))
    for variant in variants:
        if variant == args.baseline:
            continue
        for metric in metrics:
            cells = [describe(paired_difference(by_seed(rows, variant, args.x, x, metric),
                                                by_seed(rows, args.baseline, args.x, x, metric))) for x in xs]
            print(f"| {variant} | {metric} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
