"""The encoder table of docs/data.md: the random ResNet-18 against the ImageNet EfficientNet-Lite0.

    python benchmarks/encoders.py --out outputs/encoder_comparison [--seeds 0,1,2] [overrides ...]

Runs (or reuses) `fedmm sweep +experiment=encoder_comparison strategy=centralized,fedavg seed=0,1,2` with
one variant per encoder, then prints the runs' budget and a markdown table: per strategy and encoder the
rounds selected on validation, and the global test set's R@10 and 0-shot AUROC as mean ± 95% t-interval
over the seeds with each seed's value; below it, per strategy and metric, the paired difference
EfficientNet-Lite0 − ResNet-18 (mean ± 95% interval of the difference, p-value of the paired t-test).
"""

import argparse
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.studies.stats import paired_difference, t_interval
from fedmm.studies.sweep import VARIANT_AXIS, run_grid, with_seeds
from fedmm.studies.tables import budget_line

ENCODERS = {"encoders.image.name=resnet18 encoders.image.weights=null": "ResNet-18, random init",
            "encoders.image.name=efficientnet_lite0 encoders.image.weights=packaged": "EfficientNet-Lite0, ImageNet"}
STRATEGIES = ("centralized", "fedavg")
METRICS = ("i2t_recall@10", "zeroshot_auroc_macro")


def table(runs: dict[tuple[str, str], dict[int, dict]]) -> str:
    summaries = [summary for by_seed in runs.values() for summary in by_seed.values()]
    lines = [budget_line(summaries), "",
             "| encoder | strategy | selected rounds | R@10 (i2t) | zero-shot AUROC (macro) |", "|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        for variant, name in ENCODERS.items():
            by_seed = runs[strategy, variant]
            cells = [t_interval([by_seed[s][m] for s in sorted(by_seed)]).format() + " ("
                     + ", ".join(f"{by_seed[s][m]:.3f}" for s in sorted(by_seed)) + ")" for m in METRICS]
            rounds = ", ".join(str(by_seed[s]["evaluated_round"]) for s in sorted(by_seed))
            lines.append(f"| {name} | {strategy} | {rounds} | " + " | ".join(cells) + " |")
    lines.append("")
    resnet, lite = ENCODERS
    for strategy in STRATEGIES:
        for metric in METRICS:
            d = paired_difference({s: r[metric] for s, r in runs[strategy, lite].items()},
                                  {s: r[metric] for s, r in runs[strategy, resnet].items()})
            lines.append(f"- {strategy}, {metric}: EfficientNet-Lite0 − ResNet-18 = {d.difference.mean:+.3f} ± "
                         f"{d.difference.half_width:.3f} (p = {d.p_value:.3f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/encoder_comparison"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    _, finished = run_grid(with_seeds(["+experiment=encoder_comparison", f"strategy={','.join(STRATEGIES)}",
                                       *args.overrides], args.seeds),
                           args.out, run_with_progress, variants=list(ENCODERS))
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for cell, summary in finished:
        runs.setdefault((cell.values["strategy"], cell.values[VARIANT_AXIS]), {})[int(summary["seed"])] = summary
    print(table(runs))


if __name__ == "__main__":
    main()
