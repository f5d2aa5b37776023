"""What SecAgg+ costs per round against plain averaging, at 6 and 50 hospitals.

    python benchmarks/secagg_cost.py [--hospitals 6,50] [--sparse 7] [--rounds 4] [--out outputs/secagg-cost]
                                     [--update docs/privacy.md]

Runs the smoke experiment (resnet18 features at 64 px, small heads) with every hospital paired and sampled,
30 studies per hospital, on the in-process engine (one process, hospitals one after another, so the time
is the protocol's CPU and no engine's scheduling), with and without `secagg.enabled=true`. Prints, per
setting, the mean wall time of rounds 2..R (round 1 warms caches up), what one hospital uploads per round
and how far the secure global heads end from the plain ones after R rounds (max |difference| over all
coordinates). SecAgg (every hospital a neighbour of every other) costs O(n²) masks a round; `--sparse k`
adds a SecAgg+ row per federation larger than k with `secagg.num_shares=k` (k neighbours, threshold k/2).
`--update FILE` writes the table between `<!-- benchmarks/secagg_cost.py: begin -->` and `... end -->`.
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fedmm.compose import compose_config
from fedmm.experiment import run_experiment
from fedmm.studies.markdown import update_section


def measure(hospitals: int, rounds: int, secagg: bool, out: Path,
            shares: int | None = None) -> tuple[float, float, dict]:
    run_dir = out / f"{hospitals}-{'secagg' if secagg else 'plain'}{f'-{shares}' if shares else ''}"
    cfg = compose_config(["+experiment=smoke", f"scenario.num_hospitals={hospitals}",
                          f"scenario.profiles=[{{count: {hospitals}, paired: 1.0}}]",
                          f"dataset.num_samples={30 * hospitals}", f"federation.rounds={rounds}",
                          f"federation.evaluate_every={rounds}", "simulation.engine=inprocess",
                          f"secagg.enabled={str(secagg).lower()}", f"run_dir={run_dir}",
                          *([f"secagg.num_shares={shares}"] if shares else [])])
    stamps = [time.perf_counter()]
    summary = run_experiment(cfg, on_round=lambda server_round, line: stamps.append(time.perf_counter()))
    per_round = [later - earlier for earlier, later in zip(stamps[1:], stamps[2:])]  # rounds 2..R
    return statistics.mean(per_round), summary["upload_bytes_per_round"], load_file(run_dir / "heads.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", default="6,50")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sparse", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("outputs/secagg-cost"))
    parser.add_argument("--update", type=Path, help="a markdown file with the table's begin/end markers")
    args = parser.parse_args()
    lines = ["| hospitals | neighbours | plain s/round | SecAgg+ s/round | ratio | upload per hospital: plain / "
             "SecAgg+ | max abs difference of the final heads |", "|---|---|---|---|---|---|---|"]
    for hospitals in (int(n) for n in args.hospitals.split(",")):
        plain_s, plain_bytes, plain_heads = measure(hospitals, args.rounds, False, args.out)
        for shares in [None, *([args.sparse] if hospitals > args.sparse else [])]:
            secure_s, secure_bytes, secure_heads = measure(hospitals, args.rounds, True, args.out, shares)
            difference = max(float(np.abs(secure_heads[k] - plain_heads[k]).max()) for k in plain_heads)
            lines.append(f"| {hospitals} | {shares or hospitals} | {plain_s:.2f} | {secure_s:.2f} | "
                         f"{secure_s / plain_s:.1f}x | {plain_bytes / 1e6:.2f} MB / {secure_bytes / 1e6:.2f} MB | "
                         f"{difference:.1e} |")
    text = (f"smoke heads (0.66 MB of float32), {args.rounds} rounds, every hospital paired and sampled, in-process "
            "engine on 2 cores; s/round: mean of rounds 2..R\n\n" + "\n".join(lines))
    print(text)
    if args.update:
        update_section(args.update, "benchmarks/secagg_cost.py", text)


if __name__ == "__main__":
    main()
