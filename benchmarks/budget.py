"""The budget sweep behind the default rounds and early stopping: learning curves on validation and test.

    python benchmarks/budget.py --out outputs/budget [--seeds 0] [--plot docs/budget-curves.png]
                                [--scenarios balanced,imbalanced] [--update docs/strategies.md] [overrides ...]

On a dataset from disk: `--scenarios natural dataset=folder dataset.path=DIR` (one hospital per site).

Runs `fedmm sweep strategy=centralized,fedavg,local scenario=balanced,imbalanced federation.rounds=60
federation.evaluate_every=2 early_stopping.patience=null` (every round is run; the round that validation
selects is still recorded) and draws, per scenario and strategy, global i2t R@10 and 0-shot AUROC on the
validation split (solid) and on the test set (dotted) against the round, with the selected round marked.
The table gives per cell the selected round, its test metrics, and the last round's, so the cost of
running past the plateau is visible. `--update FILE` writes it between `<!-- benchmarks/budget.py: begin -->`
and `<!-- benchmarks/budget.py: end -->`.
"""

import argparse
import statistics
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.runs.recorder import read_metric_lines
from fedmm.studies.markdown import update_section
from fedmm.studies.sweep import run_grid, with_seeds

STRATEGIES, SCENARIOS = ("centralized", "fedavg", "local"), "balanced,imbalanced"
CURVES = (("i2t_recall@10", "global i2t R@10"), ("zeroshot_auroc_macro", "global 0-shot AUROC"))
FIXED = ["federation.rounds=60", "federation.evaluate_every=2", "early_stopping.patience=null"]


def curves(run_dir: Path) -> list[dict]:
    lines = read_metric_lines(run_dir)
    return [line for line in lines if "validation" in line]


def plot(finished: list, scenarios: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(scenarios), len(CURVES), figsize=(12, 4 * len(scenarios)), squeeze=False)
    for row, scenario in zip(axes, scenarios):
        for ax, (metric, title) in zip(row, CURVES):
            for index, strategy in enumerate(STRATEGIES):
                runs = [(cell, s) for cell, s in finished if s["scenario"] == scenario
                        and cell.values["strategy"] == strategy]
                for number, (_, summary) in enumerate(runs):
                    lines = curves(Path(summary["run_dir"]))
                    rounds = [line["round"] for line in lines]
                    label = strategy if number == 0 else None
                    ax.plot(rounds, [line["validation"][metric] for line in lines], color=f"C{index}", label=label)
                    ax.plot(rounds, [line["global"][metric] for line in lines], color=f"C{index}", linestyle=":")
                    selected = summary["selection"]["selected_round"]
                    ax.axvline(selected, color=f"C{index}", linewidth=0.6, alpha=0.6)
            ax.set(title=f"{scenario}: {title}", xlabel="round")
            ax.legend(fontsize=7, title="solid: validation, dotted: test, line: selected", title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def table(finished: list, scenarios: list[str], command: str) -> str:
    lines = [f"```bash\n{command}\n```", "",
             "| scenario | strategy | seeds | selected round (on validation) | test R@10 there | test AUROC there | "
             "test R@10 at the last round | test AUROC at the last round |", "|---|---|---|---|---|---|---|---|"]
    for scenario in scenarios:
        for strategy in STRATEGIES:
            runs = [s for cell, s in finished if s["scenario"] == scenario
                    and cell.values["strategy"] == strategy]
            if not runs:
                continue
            last = [curves(Path(s["run_dir"]))[-1]["global"] for s in runs]
            figures = [statistics.fmean(source[metric] for source in sources) for sources in (runs, last)
                       for metric in ("i2t_recall@10", "zeroshot_auroc_macro")]
            selected = ", ".join(str(s["selection"]["selected_round"]) for s in runs)
            lines.append(f"| {scenario} | {strategy} | {len(runs)} | {selected} | "
                         + " | ".join(f"{value:.3f}" for value in figures) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--plot", type=Path, default=None, help="also save the curves here (default: OUT/curves.png)")
    parser.add_argument("--scenarios", default=SCENARIOS, help="comma-separated scenario options")
    parser.add_argument("--update", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    grid = [*FIXED, *args.overrides, f"strategy={','.join(STRATEGIES)}", f"scenario={','.join(scenarios)}"]
    _, finished = run_grid(with_seeds(grid, args.seeds), args.out, run_with_progress, print)
    finished = [(cell, summary | {"run_dir": str(args.out / "cells" / cell.name)}) for cell, summary in finished]
    for path in {args.out / "curves.png", args.plot or args.out / "curves.png"}:
        plot(finished, scenarios, path)
    command = " ".join(["python benchmarks/budget.py --out", str(args.out), "--seeds", args.seeds,
                        *(["--plot", str(args.plot)] if args.plot else []),
                        *(["--scenarios", args.scenarios] if args.scenarios != SCENARIOS else []), *args.overrides])
    text = table(finished, scenarios, command)
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/budget.py", text)


if __name__ == "__main__":
    main()
