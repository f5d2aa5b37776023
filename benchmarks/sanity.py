"""Known results fedmm must reproduce at its default budget, each with pass/fail and its figures.

    python benchmarks/sanity.py --out outputs/sanity [--seeds 0,1,2] [--only NAME] [--update docs/strategies.md]
                                [overrides ...]

Every check is a comparison over the same seeds (`fedmm.studies.compare` / `privacy_sweep`, cells reused
when finished with the same config), read with `fedmm.studies.stats` (mean over seeds, 95% Student-t
interval, paired t-test):
  iid        FedAvg on `balanced` (6 IID hospitals of equal size, all paired) reaches at least 95% of
             `centralized` in global i2t R@10 (ratio of the means over seeds).
  local      On `imbalanced`, `local` (each hospital alone, at its round selected on validation) is worse
             than FedAvg: lower mean global R@10, with the paired 95% interval of the difference below 0.
  dp         DP-SGD's global 0-shot AUROC and R@10 fall monotonically as ε falls (means over seeds at
             ε = 1, 8 and the noise-free objective), at 10 rounds (a DP-SGD round costs about 3 plain ones).
  identical  On `balanced` (identical hospitals up to sampling), every averaging strategy that reduces
             to FedAvg there agrees with it at equal rounds: in each seed, its test R@10 and AUROC at the
             round FedAvg's validation selected (read from its metrics.jsonl), |mean difference| within the
             half-width of FedAvg's own 95% seed interval. The question is whether the algorithm reduces to
             FedAvg, so both models get the same training; the difference at each run's own selected round
             (where selection on R@10 moves the round by tens, and AUROC with it) is printed beside it.
Exit status 1 when a check fails. `--update FILE` writes the result table between
`<!-- benchmarks/sanity.py: begin -->` and `<!-- benchmarks/sanity.py: end -->`.
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmm.cli import run_with_progress
from fedmm.runs.recorder import global_metrics_by_round
from fedmm.studies.compare import run_comparison
from fedmm.studies.markdown import update_section
from fedmm.studies.privacy_sweep import run_privacy_sweep
from fedmm.studies.stats import INTERVAL_NAME, paired_difference

R10, AUROC = "i2t_recall@10", "zeroshot_auroc_macro"
# Reduce to FedAvg on IID hospitals of equal size and all-paired data: FedNova exactly (equal local steps),
# FedProx as μ → 0 (μ = 0.01). Not SCAFFOLD (its local optimizer is SGD, FedAvg's AdamW), q-FFL (it reweights
# by loss on purpose) or the server optimizers (another server step).
AGREEING = ("fedavg", "fedprox", "fednova")
EPSILONS = (1.0, 8.0, math.inf)
DP_ROUNDS = 10  # keeps the check near 8 minutes: a DP-SGD round costs about 3 plain ones (ghost clipping)


@dataclass(frozen=True)
class Result:
    name: str
    claim: str
    passed: bool
    figures: str


def interval(row: dict, column: str) -> str:
    half = row.get(f"{column}_ci")
    return f"{row[column]:.3f}" + ("" if half is None else f" ± {half:.3f}")


def by_strategy(rows: list[dict]) -> dict[str, dict]:
    return {row["strategy"]: row for row in rows}


def check_iid(out: Path, overrides: list[str], seeds: str, log: Callable[[str], None]) -> Result:
    rows = by_strategy(run_comparison(["centralized", "fedavg"], ["balanced"], overrides, out / "balanced",
                                      run_with_progress, log, seeds, baseline="centralized"))
    ratio = rows["fedavg"][R10] / rows["centralized"][R10]
    return Result("iid", "FedAvg on IID hospitals reaches ≥ 95% of centralized (global R@10)", ratio >= 0.95,
                  f"fedavg {interval(rows['fedavg'], R10)}, centralized {interval(rows['centralized'], R10)}: "
                  f"{100 * ratio:.1f}%")


def check_local(out: Path, overrides: list[str], seeds: str, log: Callable[[str], None]) -> Result:
    rows = by_strategy(run_comparison(["fedavg", "local"], ["imbalanced"], overrides, out / "imbalanced",
                                      run_with_progress, log, seeds, baseline="fedavg"))
    local = rows["local"]
    passed, p_value = local[f"{R10}_sig"] == -1, local.get(f"{R10}_p") or float("nan")
    return Result("local", "local training alone is worse than FedAvg on `imbalanced` (global R@10, paired)", passed,
                  f"local {interval(local, R10)} vs fedavg {interval(rows['fedavg'], R10)}: difference "
                  f"{local[f'{R10}_diff']:+.3f} (p = {p_value:.3g}); hospitals' mean AUROC "
                  f"{interval(local, 'hospital_mean_auroc')} vs {interval(rows['fedavg'], 'hospital_mean_auroc')}")


def check_dp(out: Path, overrides: list[str], seeds: str, log: Callable[[str], None]) -> Result:
    overrides = [*overrides, f"federation.rounds={DP_ROUNDS}"]
    rows = [row for row in run_privacy_sweep(EPSILONS, overrides, out / "dp", run_with_progress, log, seeds)
            if row["target_epsilon"] != ""]  # the in-batch reference is another objective
    rows.sort(key=lambda row: row["target_epsilon"])
    monotone = {metric: all(a[metric] <= b[metric] for a, b in zip(rows, rows[1:])) for metric in (AUROC, R10)}
    figures = "; ".join(f"{metric}: " + " ≤ ".join(f"ε={row['target_epsilon']:g} {row[metric]:.3f}" for row in rows)
                        for metric in (AUROC, R10))
    return Result("dp", f"DP-SGD utility falls monotonically as ε falls (means over seeds, {DP_ROUNDS} rounds)",
                  all(monotone.values()),
                  figures)


def check_identical(out: Path, overrides: list[str], seeds: str, log: Callable[[str], None]) -> Result:
    rows = by_strategy(run_comparison(list(AGREEING), ["balanced"], overrides, out / "balanced",  # reuses fedavg
                                      run_with_progress, log, seeds, baseline="fedavg"))
    runs = finished_runs(out / "balanced")
    fedavg, parts, passed = rows["fedavg"], [], True
    seed_list = [int(seed) for seed in seeds.split(",")]  # checked by run_comparison
    rounds = {seed: runs["fedavg", seed][0]["evaluated_round"] for seed in seed_list}  # FedAvg's selected rounds
    for name in AGREEING[1:]:
        for metric in (R10, AUROC):
            difference = paired_difference(at_rounds(runs, name, rounds, metric),
                                           at_rounds(runs, "fedavg", rounds, metric))
            # a run that ended before FedAvg's selected round has no value there: the check cannot pass
            gap = (difference.difference.mean if difference and difference.difference.n == len(rounds) else math.inf)
            tolerance = fedavg[f"{metric}_ci"] or 0.0
            passed &= abs(gap) <= tolerance
            parts.append(f"{name} {metric} Δ {gap:+.3f} ({'≤' if abs(gap) <= tolerance else '>'} {tolerance:.3f}; "
                         f"at its own selected rounds {rows[name][metric]:.3f}, "
                         f"Δ {rows[name][metric] - fedavg[metric]:+.3f})")
    return Result("identical", "with identical hospitals every averaging strategy agrees with FedAvg at equal rounds "
                  "(within FedAvg's seed interval)", passed,
                  f"fedavg R@10 {interval(fedavg, R10)}, AUROC {interval(fedavg, AUROC)} at its selected rounds "
                  f"{'/'.join(map(str, rounds.values()))}; " + "; ".join(parts))


def finished_runs(out: Path) -> dict[tuple[str, int], tuple[dict, dict[int, dict[str, float]]]]:
    """Every finished run of a comparison under `out`, by (strategy, seed): its summary and its learning curve."""
    runs = {}
    for path in (out / "cells").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        runs[summary["strategy"], int(summary["seed"])] = (summary, global_metrics_by_round(path.parent))
    return runs


def at_rounds(runs: dict, strategy: str, rounds: dict[int, int], metric: str) -> dict[int, float | None]:
    """`strategy`'s test `metric` in each seed at that seed's round in `rounds` (None: its run ended before)."""
    return {seed: runs[strategy, seed][1].get(r, {}).get(metric) for seed, r in rounds.items()}


CHECKS = {"iid": check_iid, "identical": check_identical, "local": check_local, "dp": check_dp}


def run_minutes(out: Path) -> float:
    """Wall time of every run under `out` (their summaries' `wall_time_s`), whether this invocation ran them
    or reused them, in minutes."""
    return sum(json.loads(path.read_text())["wall_time_s"] for path in out.rglob("summary.json")) / 60


def table(results: list[Result], command: str, seeds: str, minutes: float) -> str:
    lines = [f"```bash\n{command}\n```", "",
             f"Seeds {seeds}; intervals: {INTERVAL_NAME}; the runs behind these checks took {minutes:.0f} min "
             "on this machine (the sum of their `wall_time_s`).", "",
             "| check | claim | result | figures |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.claim} | {'pass' if r.passed else '**fail**'} | {r.figures} |" for r in results]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", action="append", choices=sorted(CHECKS), default=None)
    parser.add_argument("--update", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    started, results = time.perf_counter(), []
    command = " ".join(["python benchmarks/sanity.py", "--out", str(args.out), "--seeds", args.seeds,
                        *(f"--only {n}" for n in args.only or []), *args.overrides])
    for name in args.only or CHECKS:
        result = CHECKS[name](args.out, args.overrides, args.seeds, print)
        print(f"{'PASS' if result.passed else 'FAIL'} {result.name}: {result.claim}\n     {result.figures}", flush=True)
        results.append(result)
        if args.update:  # after every check: a stopped suite keeps what it measured
            update_section(args.update, "benchmarks/sanity.py",
                           table(results, command, args.seeds, run_minutes(args.out)))
    minutes = (time.perf_counter() - started) / 60
    print(f"{sum(r.passed for r in results)}/{len(results)} checks pass ({minutes:.0f} min)")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
