"""The attack table: the global model's R@10 and AUROC under each aggregator with 0, 1 and 2 attackers of 8.

    python benchmarks/attacks.py --out outputs/attacks [--update docs/robustness.md] [overrides ...]

Runs `fedmm sweep +experiment=robustness aggregator=... seed=0,1,2` with one variant per attack level
(a seeded fraction of the 8 hospitals sends a sign-flipped update, scale 5: received - 5·Δ), reusing
finished cells, then prints two markdown tables of mean ± 95% t-interval over the seeds, each value tested
(paired by seed) against the same aggregator without attackers:
- at the last round: the model training ends with, what the aggregator alone achieves;
- at the round selected on the server's validation split: what a server that holds clean data of its own
  recovers by model selection (a defence of its own, which can hide a broken aggregator).
The first also says whether each aggregator holds under attack: its mean R@10 and AUROC with 1 and 2
attackers within `--margin-recall` and `--margin-auroc` of its own attack-free mean (the margins are
fixed before looking at the results: 0.05 and 0.02). `--update FILE` writes both between the markers
`<!-- benchmarks/attacks.py: begin -->` and `<!-- benchmarks/attacks.py: end -->`.

`--curves PNG` draws each aggregator's test R@10 per evaluated round at each attack level (mean over the
seeds, band: the 95% t-interval), from the cells' metrics.jsonl: whether an aggregator's loss under attack
is there from the start or grows with the rounds.

`--kinds` adds the other kinds of fault, one attacker of 8, under the mean and the median (`noise` σ = 1,
`stale`, `shuffled_pairs`; cells under OUT/kinds, 18 runs; the attack-free runs are the table's own), each
tested against the same aggregator without attackers, at the last round; `--update` writes it between
`<!-- benchmarks/attacks.py --kinds: begin -->` and `<!-- benchmarks/attacks.py --kinds: end -->`.
"""

import argparse
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.runs.recorder import global_metrics_by_round
from fedmm.studies.compare import COLUMNS
from fedmm.studies.markdown import update_section
from fedmm.studies.stats import t_interval
from fedmm.studies.sweep import VARIANT_AXIS, Cell, run_grid, with_seeds
from fedmm.studies.tables import Column, results_table, seeded_rows, table_section

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multikrum")
METRICS = ("i2t_recall@10", "zeroshot_auroc_macro")
SELECTED = tuple(column for name in METRICS for column in COLUMNS if column.name == name)
LAST = tuple(Column(c.name, c.header, (lambda n: lambda s: s.get("last_round_metrics", s).get(n))(c.name))
             for c in SELECTED)  # without model selection, the last round is the reported one
SELECTED_ROUND = Column("selected_round", "selected round", lambda s: s["evaluated_round"], compare=False, digits=1)
BASELINE = "the same aggregator without attackers"


KINDS = {"noise": 1.0, "stale": None, "shuffled_pairs": None}  # kind -> its scale (None: the kind has none)
KIND_AGGREGATORS = ("mean", "median")


def attack(attackers: int, kind: str, scale: float | None) -> str:
    if attackers == 0:
        return "scenario.adversaries=[]"
    return (f"scenario.adversaries=[{{fraction:{attackers / 8},kind:{kind}"
            + ("" if scale is None else f",scale:{scale:g}") + "}]")


def holds(rows: list[dict], margins: dict[str, float]) -> dict[str, str]:
    """Per aggregator, 'yes' or 'no' at each attack level: every metric's mean within its margin of the
    aggregator's own attack-free mean."""
    by_setting = {(row["aggregator"], row["attackers"]): row for row in rows}
    verdicts = {}
    for aggregator in dict.fromkeys(row["aggregator"] for row in rows):
        clean = by_setting.get((aggregator, 0))
        verdicts[aggregator] = " / ".join(
            "–" if clean is None or (aggregator, n) not in by_setting else
            "yes" if all(by_setting[aggregator, n][m] >= clean[m] - margins[m] for m in METRICS) else "no"
            for n in (1, 2))
    return verdicts


def tables(summaries: list[dict], margins: dict[str, float]) -> str:
    keys = ("aggregator", "attackers")

    def baseline(setting: dict) -> dict:
        return {**setting, "attackers": 0}

    last = seeded_rows(summaries, keys, LAST, baseline)
    selected = seeded_rows(summaries, keys, (*SELECTED, SELECTED_ROUND), baseline)
    for row in [*last, *selected]:
        row["setting"] = f"`{row['aggregator']}`, {row['attackers']} attacker{'s' * (row['attackers'] != 1)}"
    at_last_round = [s | {"evaluated_round": s.get("last_evaluated_round", s["evaluated_round"])} for s in summaries]
    verdicts = "; ".join(f"`{aggregator}` {verdict}" for aggregator, verdict in holds(last, margins).items())
    return "\n".join([
        "**At the last round** (the model training ends with):", "",
        results_table(last, "setting", LAST, at_last_round, BASELINE), "", f"Holds with 1 / 2 attackers: {verdicts}.",
        "", "**At the round selected on the server's validation split** (clean data the server holds):", "",
        table_section(selected, "setting", (*SELECTED, SELECTED_ROUND), summaries),
    ])


def kinds_table(out: Path, seeds: str, overrides: list[str], clean: list[dict]) -> str:
    """The mean and the median under one attacker of each other kind, at the last round; `clean`: the attack
    table's summaries, whose attack-free runs are the baseline."""
    levels = {attack(1, kind, scale): kind for kind, scale in KINDS.items()}
    _, finished = run_grid(with_seeds(["+experiment=robustness", f"aggregator={','.join(KIND_AGGREGATORS)}",
                                       *overrides], seeds), out, run_with_progress, variants=list(levels))
    summaries = [s | {"kind": "none"} for s in clean if s["attackers"] == 0 and s["aggregator"] in KIND_AGGREGATORS]
    summaries += [summary | {"aggregator": cell.values["aggregator"], "kind": levels[cell.values[VARIANT_AXIS]]}
                  for cell, summary in finished]
    rows = seeded_rows(summaries, ("aggregator", "kind"), LAST, lambda setting: {**setting, "kind": "none"})
    rows.sort(key=lambda row: (KIND_AGGREGATORS.index(row["aggregator"]), ["none", *KINDS].index(row["kind"])))
    for row in rows:
        row["setting"] = f"`{row['aggregator']}`, " + ("no attacker" if row["kind"] == "none" else f"`{row['kind']}`")
    at_last_round = [s | {"evaluated_round": s.get("last_evaluated_round", s["evaluated_round"])} for s in summaries]
    return (f"One attacker of 8 (`noise`: σ = {KINDS['noise']:g}); seeds {seeds}; at the last round.\n\n"
            + results_table(rows, "setting", LAST, at_last_round, BASELINE))


def plot_curves(finished: list[tuple[Cell, dict]], levels: dict[str, int], out: Path, path: Path,
                metric: str = "i2t_recall@10") -> None:
    """One panel per aggregator: `metric` on the test set per evaluated round, a line per attack level (mean over
    the seeds and its 95% t-interval as a band), over the rounds every seed evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, int], list[dict[int, dict]]] = {}
    for cell, _ in finished:
        key = (cell.values["aggregator"], levels[cell.values[VARIANT_AXIS]])
        curves.setdefault(key, []).append(global_metrics_by_round(out / "cells" / cell.name))
    aggregators = list(dict.fromkeys(aggregator for aggregator, _ in curves))
    figure, axes = plt.subplots(1, len(aggregators), figsize=(3.6 * len(aggregators), 3.4), sharey=True, squeeze=False)
    for ax, aggregator in zip(axes[0], aggregators):
        for attackers in sorted({n for a, n in curves if a == aggregator}):
            seeds = curves[aggregator, attackers]
            rounds = sorted(set.intersection(*(set(curve) for curve in seeds)))
            intervals = [t_interval([curve[r][metric] for curve in seeds]) for r in rounds]
            ax.plot(rounds, [i.mean for i in intervals], color=f"C{attackers}", label=f"{attackers} of 8 attack")
            ax.fill_between(rounds, [i.mean if i.low is None else i.low for i in intervals],
                            [i.mean if i.high is None else i.high for i in intervals], color=f"C{attackers}", alpha=0.2)
        ax.set(title=aggregator, xlabel="round")
    axes[0][0].set(ylabel=f"test {metric}")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"test {metric} per round; band: 95% t-interval over the seeds", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/attacks"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kind", default="sign_flip")
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--margin-recall", type=float, default=0.05)
    parser.add_argument("--margin-auroc", type=float, default=0.02)
    parser.add_argument("--kinds", action="store_true", help="also the other kinds of fault under mean and median")
    parser.add_argument("--update", type=Path, help="a markdown file with the table's begin/end markers")
    parser.add_argument("--curves", type=Path, help="a PNG of each aggregator's test R@10 per round")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    levels = {attack(n, args.kind, args.scale): n for n in (0, 1, 2)}
    _, finished = run_grid(with_seeds(["+experiment=robustness", f"aggregator={','.join(AGGREGATORS)}",
                                       *args.overrides], args.seeds),
                           args.out, run_with_progress, variants=list(levels))
    summaries = [summary | {"aggregator": cell.values["aggregator"], "attackers": levels[cell.values[VARIANT_AXIS]]}
                 for cell, summary in finished]
    margins = {"i2t_recall@10": args.margin_recall, "zeroshot_auroc_macro": args.margin_auroc}
    text = (f"`{args.kind}` ×{args.scale:g} attackers; seeds {args.seeds}; holds: the last round's means within "
            f"{args.margin_recall} R@10 and {args.margin_auroc} AUROC of the same aggregator without attackers\n\n"
            + tables(summaries, margins))
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/attacks.py", text)
    if args.curves:
        plot_curves(finished, levels, args.out, args.curves)
        print(f"written {args.curves}")
    if args.kinds:
        kinds = kinds_table(args.out / "kinds", args.seeds, args.overrides, summaries)
        print(kinds)
        if args.update:
            update_section(args.update, "benchmarks/attacks.py --kinds", kinds)


if __name__ == "__main__":
    main()
