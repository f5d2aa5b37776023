"""The straggler table: FedAvg and FedNova when hospitals train at different speeds and a round has a deadline.

    python benchmarks/stragglers.py --out outputs/stragglers [--update docs/conditions.md] [overrides ...]

Runs `fedmm sweep conditions=stragglers strategy=fedavg,fednova seed=0,1,2` on the default experiment (6
hospitals of `imbalanced`, the default budget with model selection on the validation split, speeds
log-normal around 100 samples per virtual second, σ = 0.7) with three variants: no deadline (every round
waits for the slowest hospital), an 8 s deadline with partial updates, and the same deadline with late
hospitals dropped. Prints mean ± 95% t-interval over the seeds of the global R@10 and AUROC, each tested
(paired by seed) against the same strategy without a deadline, late hospitals per round, the run's virtual
time and the virtual time of the selected round (when the reported model existed). `--update FILE` writes
the table between `<!-- benchmarks/stragglers.py: begin -->` and `<!-- benchmarks/stragglers.py: end -->`.
"""

import argparse
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.studies.compare import COLUMNS
from fedmm.studies.markdown import update_section
from fedmm.studies.sweep import VARIANT_AXIS, run_grid, with_seeds
from fedmm.studies.tables import Column, results_table, seeded_rows

VARIANTS = {"conditions.deadline_s=null": "no deadline", "conditions.late=partial": "8 s, partial",
            "conditions.late=drop": "8 s, drop"}
STRATEGIES = ("fedavg", "fednova")
TABLE_COLUMNS = (
    *(column for name in ("i2t_recall@10", "zeroshot_auroc_macro") for column in COLUMNS if column.name == name),
    Column("late_per_round", "late per round", lambda s: s["late_per_round"], compare=False, digits=2),
    Column("virtual_time_s", "virtual time (s)", lambda s: s["virtual_time_s"], compare=False, digits=0),
    Column("virtual_time_to_selected_s", "virtual time to the selected round (s)",
           lambda s: s.get("virtual_time_to_selected_s"), compare=False, digits=0),
)
BASELINE = "the same strategy without a deadline"


def table(summaries: list[dict]) -> str:
    no_deadline = next(iter(VARIANTS))
    rows = seeded_rows(summaries, ("strategy", VARIANT_AXIS), TABLE_COLUMNS,
                       lambda setting: {**setting, VARIANT_AXIS: no_deadline})
    for row in rows:
        row["setting"] = f"{row['strategy']}, {VARIANTS[row[VARIANT_AXIS]]}"
    return results_table(rows, "setting", TABLE_COLUMNS, summaries, BASELINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/stragglers"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--update", type=Path, help="a markdown file with the table's begin/end markers")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    _, finished = run_grid(with_seeds(["conditions=stragglers", f"strategy={','.join(STRATEGIES)}", *args.overrides],
                                      args.seeds), args.out, run_with_progress, variants=list(VARIANTS))
    summaries = [summary | cell.values for cell, summary in finished]
    text = (f"Seeds {args.seeds}; every hospital sampled, modality-aware averaging; the test metrics of the round "
            f"selected on the validation split.\n\n{table(summaries)}")
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/stragglers.py", text)


if __name__ == "__main__":
    main()
