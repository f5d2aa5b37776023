"""The dropout table: FedAvg and its modality-aware form on `imbalanced` when sampled hospitals go offline.

    python benchmarks/dropout.py --out outputs/dropout [--update docs/conditions.md] [overrides ...]

Runs `fedmm sweep conditions=dropout conditions.availability.dropout=0,0.2,0.5
strategy.modality_aware=false,true seed=0,1,2` on the default experiment (6 hospitals of `imbalanced`, the
default budget with model selection on the validation split), reusing finished cells, and prints a markdown
table: mean ± 95% t-interval over the seeds of the global model's R@10 and AUROC, the worst hospital's AUROC,
the image-only hospitals' image AUROC and the report-only hospital's report AUROC, each tested (paired by
seed) against the same form without dropout; next to them, how many rounds up to the selected one the
image-only sites (per site) and the report-only site were offline. Seeds change the partition, the
initialization and who is offline when; the dataset stays the same. `--update FILE` writes the table
between the markers `<!-- benchmarks/dropout.py: begin -->` and `<!-- benchmarks/dropout.py: end -->`.
"""

import argparse
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.runs.recorder import read_metric_lines
from fedmm.studies.compare import COLUMNS
from fedmm.studies.markdown import update_section
from fedmm.studies.sweep import run_grid, with_seeds
from fedmm.studies.tables import Column, results_table, seeded_rows

RATE, FORM = "conditions.availability.dropout", "strategy.modality_aware"
RATES = ("0", "0.2", "0.5")
FORMS = {"False": "fedavg", "True": "fedavg, modality-aware"}  # as a sweep cell records the values
SHOWN = ("i2t_recall@10", "zeroshot_auroc_macro", "hospital_worst_auroc", "image_only_auroc", "report_only_auroc")
OFFLINE = {"image_only": "rounds offline: image-only (per site)", "report_only": "rounds offline: report-only"}
TABLE_COLUMNS = (
    *(column for name in SHOWN for column in COLUMNS if column.name == name),
    *(Column(f"offline_{group}", header, (lambda g: lambda s: s[f"offline_{g}"])(group), compare=False, digits=1)
      for group, header in OFFLINE.items()),
)
BASELINE = "the same form without dropout"


def offline_rounds(run_dir: Path, summary: dict, group: str) -> float:
    """Rounds up to the reported one in which a hospital of `group` was offline, per hospital of that group."""
    members = {h for h, metrics in summary["hospitals"].items() if metrics["group"] == group}
    lines = read_metric_lines(run_dir)
    return sum(len(members & {str(h) for h in line.get("offline", [])}) for line in lines
               if line["round"] <= summary["evaluated_round"]) / len(members)


def table(summaries: list[dict]) -> str:
    rows = seeded_rows(summaries, (FORM, RATE), TABLE_COLUMNS, lambda setting: {**setting, RATE: RATES[0]})
    for row in rows:
        row["setting"] = f"{FORMS[row[FORM]]}, dropout {row[RATE]}"
    return results_table(rows, "setting", TABLE_COLUMNS, summaries, BASELINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/dropout"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--update", type=Path, help="a markdown file with the table's begin/end markers")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    _, finished = run_grid(with_seeds(["conditions=dropout", f"{FORM}={','.join(FORMS)}",
                                       f"{RATE}={','.join(RATES)}", *args.overrides], args.seeds),
                           args.out, run_with_progress)
    summaries = []
    for cell, summary in finished:
        run_dir = args.out / "cells" / cell.name
        summaries.append(summary | cell.values | {
            f"offline_{group}": offline_rounds(run_dir, summary, group) for group in OFFLINE})
    text = (f"Seeds {args.seeds}; every hospital sampled, independent offline rounds; the test metrics of the "
            f"round selected on the validation split.\n\n{table(summaries)}")
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/dropout.py", text)


if __name__ == "__main__":
    main()
