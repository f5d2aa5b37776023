"""Seconds per round and peak memory of `fedmm run` against a bare PyTorch loop doing the same work.

    python benchmarks/scale.py --hospitals 10,100,1000 --studies 3000,3000,16000 --out benchmarks/scale.json

For each size, the same federation (`strategy=fedavg scenario=balanced`, every hospital every round,
2 local epochs, evaluated once, after the last round):

- **bare loop**: one process trains one hospital after another with plain PyTorch (copy the global
  heads, AdamW, the same batches of symmetric InfoNCE, size-weighted average), with 1 and with 2 torch
  threads; seconds per round are the median of `--rounds-long` rounds after a warm-up round.
- **fedmm run**, on each engine of `--engines`: the real command, run twice (`--rounds-short` and
  `--rounds-long` rounds, features cached); seconds per round = the difference of the two wall times
  over the difference of rounds, so start-up and the final evaluation cancel. Start-up = the short
  run's wall time less its rounds.
  Peak memory comes from a third run (`--memory-rounds`): the largest sum of proportional set sizes
  (PSS, shared pages split among the processes that map them) of the command and every process
  under it, sampled every 0.5 s. Sampling takes CPU, so the timed runs are not sampled.

Extra arguments are Hydra overrides for both (e.g. `simulation.engine=inprocess`). Prints a table,
writes the figures as JSON, and with `--update README.md` rewrites the README's performance section
(between its `benchmarks/scale.py` markers) with the table and the command that made it.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from fedmm.compose import compose_config
from fedmm.federation import load_federated_data
from fedmm.models.heads import build_heads
from fedmm.models.losses import symmetric_info_nce
from fedmm.seeding import HEADS_INIT_STREAM, derive_seed
from fedmm.studies.markdown import update_section

BASE = ["strategy=fedavg", "scenario=balanced", "encoders/image=resnet18", "train.local_epochs=2",
        "federation.fraction_train=1.0"]


def overrides_for(hospitals: int, studies: int, extra: list[str]) -> list[str]:
    return [*BASE, f"scenario.num_hospitals={hospitals}", f"scenario.profiles=[{{count: {hospitals}, paired: 1.0}}]",
            f"dataset.num_samples={studies}", *extra]


def bare_loop(overrides: list[str], rounds: int, threads: int) -> float:
    """Seconds per round of FedAvg written as one plain PyTorch loop over the hospitals."""
    cfg = compose_config(overrides)
    data = load_federated_data(cfg)
    torch.set_num_threads(threads)
    splits = [data.hospital(h).train for h in range(data.num_hospitals)]
    pairs = [split.paired_mask.nonzero().flatten() for split in splits]
    heads = build_heads(data.image_dim, data.report_dim, cfg.heads, derive_seed(cfg.seed, HEADS_INIT_STREAM))
    global_state = {k: v.clone() for k, v in heads.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(rounds + 1):  # the first round warms up
        start = time.perf_counter()
        total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}
        weight = 0
        for split, rows in zip(splits, pairs):
            heads.load_state_dict(global_state)
            optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            for _ in range(cfg.train.local_epochs):
                order = rows[torch.randperm(len(rows), generator=generator)]
                for begin in range(0, len(order), cfg.train.batch_size):
                    batch = order[begin:begin + cfg.train.batch_size]
                    if len(batch) < 2:
                        continue
                    loss = symmetric_info_nce(heads.embed_images(split.image_features[batch]),
                                              heads.embed_reports(split.report_features[batch]), heads.scale()).total
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            for key, value in heads.state_dict().items():
                total[key] += value.float() * len(rows)
            weight += len(rows)
        global_state = {k: (v / weight).to(global_state[k].dtype) for k, v in total.items()}
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def fedmm_run(overrides: list[str], rounds: int, work: Path, sample_memory: bool = False) -> tuple[float, int]:
    """(wall seconds, peak PSS of the process tree in bytes, 0 unless `sample_memory`) of one `fedmm run`.
    Reading PSS walks every process's page tables, which takes CPU from the run: timed runs do not."""
    run_dir = work / f"run-{rounds}-{time.monotonic_ns()}"
    command = [str(Path(sys.executable).parent / "fedmm"), "run", *overrides, f"federation.rounds={rounds}",
               f"federation.evaluate_every={rounds}", "early_stopping.metric=null",  # the bare loop selects nothing
               f"run_dir={run_dir}", "name=bench"]
    peak = [0]
    start = time.perf_counter()
    with open(work / f"run-{rounds}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        def sample() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], pss_bytes(descendants(process.pid)))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        if sample_memory:
            sampler.start()
        code = process.wait()
        wall = time.perf_counter() - start
        if sample_memory:
            sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}; see {work / f'run-{rounds}.log'}")
    return wall, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", default="10,100,1000")
    parser.add_argument("--studies", default="3000,3000,16000")
    parser.add_argument("--rounds-short", type=int, default=2)
    parser.add_argument("--rounds-long", type=int, default=6)
    parser.add_argument("--memory-rounds", type=int, default=None,
                        help="rounds of the third, memory-sampled run (default: --rounds-long)")
    parser.add_argument("--engines", default="pool,ray", help="simulation.engine values to run, comma-separated")
    parser.add_argument("--append", action="store_true", help="keep the rows already in --out and add these")
    parser.add_argument("--skip-bare", action="store_true", help="only fedmm run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale.json"))
    parser.add_argument("--update", type=Path, action="append", default=[],
                        help="a Markdown file whose section between the scale markers gets the table (README.md)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    sizes = list(zip(map(int, args.hospitals.split(",")), map(int, args.studies.split(","))))
    previous = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
    rows, commands = list(previous.get("rows", [])), list(previous.get("commands", []))
    commands.append("python benchmarks/scale.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="fedmm-bench-") as work_dir:
        for hospitals, studies in sizes:
            overrides = overrides_for(hospitals, studies, args.overrides)
            load_federated_data(compose_config(overrides), progress=True)  # features cached before timing
            row: dict[str, object] = {"hospitals": hospitals, "studies": studies}
            if not args.skip_bare:
                row["bare_s_per_round_1_thread"] = bare_loop(overrides, args.rounds_long, 1)
                row["bare_s_per_round_2_threads"] = bare_loop(overrides, args.rounds_long, 2)
            for engine in args.engines.split(","):
                runs = [*overrides, f"simulation.engine={engine}"]
                short_s, _ = fedmm_run(runs, args.rounds_short, Path(work_dir))
                long_s, _ = fedmm_run(runs, args.rounds_long, Path(work_dir))
                _, peak = fedmm_run(runs, args.memory_rounds or args.rounds_long, Path(work_dir), sample_memory=True)
                per_round = (long_s - short_s) / (args.rounds_long - args.rounds_short)
                measured = {"s_per_round": per_round, "client_rounds_per_s": hospitals / per_round,
                            "startup_s": short_s - args.rounds_short * per_round,
                            "wall_s": {str(args.rounds_short): short_s, str(args.rounds_long): long_s},
                            "peak_pss_gb": peak / 1e9, "memory_rounds": args.memory_rounds or args.rounds_long}
                if "bare_s_per_round_2_threads" in row:
                    measured["ratio_to_bare_2_threads"] = per_round / row["bare_s_per_round_2_threads"]
                row[engine] = measured
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {memory_gb():.0f} GB, torch {torch.__version__}"
    args.out.write_text(json.dumps({"machine": machine, "overrides": [*BASE, *args.overrides], "commands": commands,
                                    "rows": rows}, indent=2) + "\n")
    text = table(rows, machine)
    print(text)
    for path in args.update:
        update_section(path, "benchmarks/scale.py", "```bash\n" + "\n".join(commands) + "\n```\n\n" + text + "\n")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []:
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def table(rows: list[dict], machine: str) -> str:
    lines = [f"machine: {machine}", "",
             "| hospitals | studies | bare loop, 1 / 2 threads (s/round) | engine | fedmm run (s/round) "
             "| ratio to 2 threads | client-rounds/s | start-up (s) | peak memory (GB, PSS) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        bare = (f"{row['bare_s_per_round_1_thread']:.2f} / {row['bare_s_per_round_2_threads']:.2f}"
                if "bare_s_per_round_1_thread" in row else "–")
        for engine, measured in row.items():
            if not isinstance(measured, dict) or "s_per_round" not in measured:
                continue
            ratio = f"{measured['ratio_to_bare_2_threads']:.2f}×" if "ratio_to_bare_2_threads" in measured else "–"
            lines.append(f"| {row['hospitals']} | {row['studies']} | {bare} | `{engine}` "
                         f"| {measured['s_per_round']:.2f} | {ratio} | {measured['client_rounds_per_s']:.1f} "
                         f"| {measured['startup_s']:.1f} "
                         f"| {measured['peak_pss_gb']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
