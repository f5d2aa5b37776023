"""The paired differences behind a sweep report's sentences, with their 95% t-intervals and p-values.

    python benchmarks/sweep_differences.py outputs/imbalance-study --x scenario.hospital_mix.unimodal \
        --shares 0,0.75 --baseline strategy=fedavg [--metric M ...]

Reads the sweep's `results.csv` (one row per cell and seed, `fedmm sweep`) and prints two markdown tables,
every difference paired by seed (`fedmm.studies.report.difference_tables`):
- along x: each variant's value at the last of `--shares` minus its value at the first;
- against the baseline: each variant minus `--baseline` at every value of x.
`fedmm report` marks the second kind with ↑/↓; this prints the sizes and p-values the docs quote.
"""

import argparse
import sys
from pathlib import Path

from fedmm.config import ConfigError
from fedmm.evaluation.metrics import REPORT_DEFAULT
from fedmm.studies.report import difference_tables

HOSPITAL_COLUMNS = ("mean_hospital_auroc", "worst_hospital_auroc", "image_only_hospital_auroc",
                    "report_only_hospital_auroc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--x", required=True, help="the swept axis, a column of results.csv")
    parser.add_argument("--shares", required=True, help="FROM,TO: the two values of x to difference")
    parser.add_argument("--baseline", required=True, help="a variant as the report names it")
    parser.add_argument("--metric", action="append", default=None)
    args = parser.parse_args()
    try:
        print(difference_tables(args.sweep_dir, args.x, args.shares, args.baseline,
                                args.metric or [*REPORT_DEFAULT, *HOSPITAL_COLUMNS]))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
