"""The attack table: the global model's R@10 and AUROC under each aggregator with 0, 1 and 2 attackers of 8.

    python benchmarks/attacks.py --out outputs/attacks [--update docs/robustness.md] [overrides ...]

Runs `fedmm sweep +experiment=robustness aggregator=... seed=0,1,2` with one variant per attack level
(a seeded fraction of the 8 hospitals sends a sign-flipped update, scale 5: received - 5·Δ), reusing
finished cells, then prints a markdown table of mean ± sample standard deviation over the seeds and
the seeds' range, and whether each aggregator holds under attack: its mean R@10 and AUROC with 1 and 2
attackers within `--margin-recall` and `--margin-auroc` of its own attack-free mean (the margins are
fixed before looking at the results: 0.05 and 0.02). `--update FILE` writes the table between the
markers `<!-- benchmarks/attacks.py: begin -->` and `<!-- benchmarks/attacks.py: end -->`.
"""

import argparse
import csv
import statistics
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.studies.markdown import update_section
from fedmm.studies.sweep import run_sweep

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multikrum")
METRICS = {"i2t_recall@10": "R@10", "zeroshot_auroc_macro": "AUROC"}


def attack(attackers: int, kind: str, scale: float) -> str:
    if attackers == 0:
        return "scenario.adversaries=[]"
    return f"scenario.adversaries=[{{fraction:{attackers / 8},kind:{kind},scale:{scale:g}}}]"


def table(rows: list[dict], levels: dict[str, int], seeds: list[str], margins: dict[str, float]) -> str:
    header = "| aggregator | " + " | ".join(f"{label}, {n} attacker{'s' * (n != 1)}" for n in levels.values()
                                              for label in METRICS.values()) + " | holds with 1 / 2 attackers |"
    lines = [header, "|---" * (2 + len(METRICS) * len(levels)) + "|"]
    for aggregator in AGGREGATORS:
        cells, means = [], {}
        for variant, attackers in levels.items():
            for metric in METRICS:
                values = [float(r[metric]) for r in rows if r["aggregator"] == aggregator and r["variant"] == variant]
                if len(values) != len(seeds):
                    cells.append("–")
                    continue
                means[attackers, metric] = statistics.mean(values)
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} "
                             f"({min(values):.3f}–{max(values):.3f})")
        holds = ["yes" if all((n, m) in means and means[n, m] >= means[0, m] - margins[m] for m in METRICS)
                 else "no" for n in (1, 2)] if all((0, m) in means for m in METRICS) else ["–", "–"]
        lines.append(f"| `{aggregator}` | " + " | ".join(cells) + f" | {' / '.join(holds)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/attacks"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kind", default="sign_flip")
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--margin-recall", type=float, default=0.05)
    parser.add_argument("--margin-auroc", type=float, default=0.02)
    parser.add_argument("--update", type=Path, help="a markdown file with the table's begin/end markers")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    levels = {attack(n, args.kind, args.scale): n for n in (0, 1, 2)}
    run_sweep(["+experiment=robustness", f"aggregator={','.join(AGGREGATORS)}", f"seed={args.seeds}",
               *args.overrides], args.out, run_with_progress, variants=list(levels))
    with (args.out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    margins = {"i2t_recall@10": args.margin_recall, "zeroshot_auroc_macro": args.margin_auroc}
    text = (f"`{args.kind}` ×{args.scale:g} attackers; mean ± sd (min–max) over seeds {args.seeds}; holds: within "
            f"{args.margin_recall} R@10 and {args.margin_auroc} AUROC of the same aggregator without attackers\n\n"
            + table(rows, levels, args.seeds.split(","), margins))
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/attacks.py", text)


if __name__ == "__main__":
    main()
