"""Whole runs: the Flower Simulation Engine (3 hospitals, 2 rounds), the references, and reproducibility."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import processes_mentioning, session_dir, stop_processes_mentioning
from safetensors.torch import load_file

from fedmm.cli import main as cli_main
from fedmm.compose import compose_config, load_config_file
from fedmm.evaluation.metrics import KS
from fedmm.experiment import run_experiment
from fedmm.runs.recorder import read_metric_lines

SUMMARY_KEYS = [f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in KS] + ["zeroshot_auroc_macro"]


def comparable(summary: dict) -> dict:
    """The summary as summary.json holds it, less what differs between identical runs."""
    as_saved = json.loads(json.dumps(summary))
    return {key: value for key, value in as_saved.items() if key not in ("wall_time_s", "run_dir")}


def fedavg_two_of_three(smoke_overrides, run_dir, engine="inprocess"):
    return compose_config([*smoke_overrides, f"simulation.engine={engine}", "strategy=fedavg",
                           "federation.clients_per_round=2", f"run_dir={run_dir}"])


@pytest.fixture(scope="module")  # built once per session, by whichever xdist worker asks first
def two_federated_runs(smoke_overrides, tmp_path_factory):
    """One config (2 of 3 hospitals sampled per round) through Flower's Simulation Engine (`ray`, via a
    SuperLink and `flwr run`) and through the in-process engine: (ray dir, in-process dir, summaries)."""
    root, lock = session_dir(tmp_path_factory, "two-federated-runs")
    with lock:
        if not (root / "summaries.json").exists():
            summaries = [run_experiment(fedavg_two_of_three(smoke_overrides, root / engine, engine))
                         for engine in ("ray", "inprocess")]
            (root / "summaries.json").write_text(json.dumps(summaries))
    return root / "ray", root / "inprocess", json.loads((root / "summaries.json").read_text())


@pytest.mark.slow
def test_simulation_writes_every_output(two_federated_runs):
    run_dir, _, (summary, _) = two_federated_runs
    lines = read_metric_lines(run_dir)
    assert [line["round"] for line in lines] == [1, 2]
    for line in lines:
        assert len(line["sampled"]) == 2 and sorted(map(int, line["train"])) == line["sampled"]
        assert set(line["hospitals"]) == {"0", "1", "2"}  # every hospital evaluates on its local split
        assert {"group/paired", "group/image_only", "hospital_mean", "hospital_worst"} <= set(line)
        assert "i2t_recall@10" in line["global"] and "zeroshot_auroc_macro" in line["global"]
    image_only = lines[-1]["hospitals"]["1"]
    assert image_only["group"] == "image_only" and "zeroshot_auroc_macro" in image_only
    assert "i2t_recall@10" not in image_only  # no pairs there: no retrieval metric, rather than a fake zero
    assert all(key in summary for key in SUMMARY_KEYS)
    assert (
        0.0 <= summary["i2t_recall@10"] <= 1.0
        and summary["ceiling"]["i2t_recall@10"] > summary["chance"]["i2t_recall@10"]
    )
    assert set(summary["hospitals"]) == {"0", "1", "2"}
    saved = load_config_file(run_dir / "config.yaml")
    assert saved.federation.clients_per_round == 2 and saved.run_dir == str(run_dir)
    heads = load_file(run_dir / "heads.safetensors")
    assert {"logit_scale", "image_head.1.weight", "report_head.3.bias"} <= set(heads)
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def assert_same_run(first, second, summary_a, summary_b):
    assert (first / "metrics.jsonl").read_text() == (second / "metrics.jsonl").read_text()
    assert comparable(summary_a) == comparable(summary_b)
    heads_a, heads_b = load_file(first / "heads.safetensors"), load_file(second / "heads.safetensors")
    assert all(torch.equal(heads_a[key], heads_b[key]) for key in heads_a)


@pytest.mark.slow
def test_the_in_process_engine_writes_what_the_ray_engine_writes(two_federated_runs):
    ray_run, in_process_run, (ray_summary, in_process_summary) = two_federated_runs
    assert_same_run(ray_run, in_process_run, ray_summary, in_process_summary)


@pytest.mark.slow
def test_the_pool_engine_writes_what_the_in_process_engine_writes(two_federated_runs, smoke_overrides, tmp_path):
    _, in_process_run, (_, in_process_summary) = two_federated_runs
    summary = run_experiment(fedavg_two_of_three(smoke_overrides, tmp_path, "pool"))
    assert_same_run(in_process_run, tmp_path, in_process_summary, summary)


@pytest.mark.slow
@pytest.mark.parametrize("state", [["strategy=ditto"], ["privacy=dp_sgd"], ["strategy=scaffold"]],
                         ids=["personal-model", "dp-ledger", "control-variates"])
def test_the_pool_engine_keeps_each_hospitals_private_state_across_rounds(state, smoke_overrides, tmp_path):
    # Round 2 starts from what round 1 left in each hospital's context.state (Ditto's own model, the DP-SGD
    # ledger whose epsilon the summary reports, SCAFFOLD's c_i next to the server's c in a second record),
    # which may come back from a different worker.
    runs = {engine: run_experiment(compose_config([*smoke_overrides, *state, f"simulation.engine={engine}",
                                                   f"run_dir={tmp_path / engine}"]))
            for engine in ("pool", "inprocess")}
    assert_same_run(tmp_path / "pool", tmp_path / "inprocess", runs["pool"], runs["inprocess"])


class RayCluster:
    """A head and a second node, started with `ray start` on 127.0.0.1 with one CPU each, in a private
    temporary directory (so no later `ray.init` finds them); stopped by process id."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir, self.port = temp_dir, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = os.environ | {"RAY_TMPDIR": str(temp_dir), "RAY_USAGE_STATS_ENABLED": "0"}
        ray = str(Path(sys.executable).parent / "ray")
        head = [ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false"]
        second = [ray, "start", f"--address={self.address}"]
        for command in (head, second):
            subprocess.run([*command, "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                            "--disable-usage-stats"], env=self.env, check=True, capture_output=True, timeout=120)

    def ask(self, expression: str):
        """The JSON value of `expression`, evaluated by a Ray driver attached to the cluster (in a process of
        its own, so this one never joins a cluster)."""
        script = (f"import json, ray; from ray._private import state; "
                  f"ray.init(address={self.address!r}, log_to_driver=False); print(json.dumps({expression}))")
        out = subprocess.run([sys.executable, "-c", script], env=self.env, check=True, capture_output=True,
                             text=True, timeout=120).stdout
        return json.loads(out.strip().splitlines()[-1])

    def actor_nodes(self) -> list[str]:
        """The node of every ClientAppActor the cluster has run (Ray keeps dead actors' records)."""
        return self.ask("[a['Address']['NodeID'] for a in state.actors().values() "
                        "if a['ActorClassName'] == 'ClientAppActor']")

    def stop(self) -> None:
        """Stop every process of this cluster (their command lines name the temporary directory) and what they
        started: SIGTERM, then SIGKILL after 10 s."""
        stop_processes_mentioning(str(self.temp_dir))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_simulation_on_a_two_node_ray_cluster_equals_the_one_node_run(two_federated_runs, smoke_overrides,
                                                                         monkeypatch):
    # `ray start` keeps Unix sockets under its temporary directory: a short path (the limit is 107 bytes)
    temp_dir = Path(tempfile.mkdtemp(prefix="fedmm-ray-", dir="/tmp"))
    cluster = RayCluster(temp_dir)
    try:
        assert cluster.ask("len(ray.nodes())") == 2
        monkeypatch.setenv("RAY_TMPDIR", str(temp_dir))
        run_dir = temp_dir / "run"
        cfg = fedavg_two_of_three(smoke_overrides, run_dir, "ray")
        cfg = dataclasses.replace(cfg, simulation=dataclasses.replace(cfg.simulation, ray_address=cluster.address))
        summary = run_experiment(cfg)
        nodes = cluster.actor_nodes()
    finally:
        cluster.stop()
    assert len(set(nodes)) == 2  # one ClientApp actor on each node (one CPU each, one CPU per hospital)
    ray_run, _, (ray_summary, _) = two_federated_runs  # the same config on a private one-node Ray instance
    assert_same_run(run_dir, ray_run, summary, ray_summary)
    assert not processes_mentioning(str(temp_dir))  # both nodes are gone
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_same_seed_and_config_give_identical_metrics(two_federated_runs, smoke_overrides, tmp_path):
    # Run again: the same bytes. (With the test above, and tests/server/test_flwr_run.py's second Ray run,
    # which also equals the in-process run, this holds for the Ray engine too.)
    _, in_process_run, (_, in_process_summary) = two_federated_runs
    summary = run_experiment(fedavg_two_of_three(smoke_overrides, tmp_path))
    assert_same_run(in_process_run, tmp_path, in_process_summary, summary)


@pytest.mark.slow
def test_training_changes_the_heads_it_should(two_federated_runs, smoke_overrides):
    from fedmm.federation import load_federated_data
    from fedmm.models.heads import build_heads
    from fedmm.seeding import HEADS_INIT_STREAM, derive_seed

    first, _, _ = two_federated_runs
    cfg = load_config_file(first / "config.yaml")
    data = load_federated_data(cfg)
    initial = build_heads(
        data.image_dim, data.report_dim, cfg.heads, derive_seed(cfg.seed, HEADS_INIT_STREAM)
    ).state_dict()
    trained = load_file(first / "heads.safetensors")
    assert not torch.equal(initial["image_head.1.weight"], trained["image_head.1.weight"])
    assert not torch.equal(initial["logit_scale"], trained["logit_scale"])


@pytest.mark.parametrize("strategy", ["centralized", "local"])
def test_reference_runs(strategy, smoke_overrides, tmp_path):
    cfg = compose_config([*smoke_overrides, f"strategy={strategy}", f"run_dir={tmp_path}"])
    summary = run_experiment(cfg)
    assert all(key in summary for key in SUMMARY_KEYS) and summary["strategy"] == strategy
    assert len(read_metric_lines(tmp_path)) == 2 and set(summary["hospitals"]) == {"0", "1", "2"}
    heads = load_file(tmp_path / "heads.safetensors")
    assert ("hospital2.logit_scale" in heads) == (strategy == "local")
    again = run_experiment(compose_config([*smoke_overrides, f"strategy={strategy}", f"run_dir={tmp_path / 'again'}"]))
    assert comparable(summary) == comparable(again)


def test_centralized_gets_the_federations_budget_in_sample_passes(smoke_overrides, tmp_path):
    """Every hospital every round: the same rows as FedAvg exactly. One of three: a third of the pool a round."""
    def passes(strategy: str, sampled: int) -> list[int]:
        cfg = compose_config([*smoke_overrides, f"strategy={strategy}", f"federation.clients_per_round={sampled}",
                              "federation.rounds=3", f"run_dir={tmp_path / f'{strategy}-{sampled}'}"])
        summary = run_experiment(cfg)
        lines = read_metric_lines(Path(cfg.run_dir))
        per_round = [sum(m.get("train-samples", 0) for m in line["train"].values()) for line in lines]
        assert summary["sample_passes"] == sum(per_round) > 0
        return per_round

    everyone = passes("centralized", 3)
    assert everyone == passes("fedavg", 3)
    third = passes("centralized", 1)  # a fresh third of the pooled rows each round (the usable ones are counted)
    assert 0.2 < sum(third) / sum(everyone) < 0.5


def test_finished_run_dir_is_never_overwritten(smoke_overrides, tmp_path):
    cfg = compose_config([*smoke_overrides, "strategy=centralized", f"run_dir={tmp_path}"])
    run_experiment(cfg)
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(Exception, match="already holds a finished run"):
        run_experiment(cfg)
    assert (tmp_path / "summary.json").read_text() == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=fedsomething"], "fedavg"),
        (["encoders.image.weights=/missing/resnet18.pth"], "encoders.image.weights"),
        (["encoders.image.name=vit"], "encoders.image.name='vit' is unknown"),
        (["scenario.num_hospitals=5000"], "scenario.profiles cover 6 hospitals"),
        (["federation.clients_per_round=9"], "federation.clients_per_round=9"),
    ],
)
def test_cli_rejects_bad_options_before_any_work(overrides, message, capsys, tmp_path, cache_dir):
    code = cli_main(["run", f"cache_dir={cache_dir}", f"run_dir={tmp_path / 'never'}", *overrides])
    assert code == 2
    assert message in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_compare_writes_tables_with_intervals_and_reuses_finished_cells(smoke_overrides, tmp_path, capsys):
    import csv

    arguments = ["compare", "--strategies", "fedavg,fedper,fedprox", "--scenarios", "balanced", "--seeds", "0,1",
                 "--out", str(tmp_path), *smoke_overrides]
    assert cli_main(arguments) == 0
    per_seed = list(csv.DictReader((tmp_path / "seeds.csv").open()))
    assert [(r["strategy"], r["seed"]) for r in per_seed] == [
        (strategy, seed) for strategy in ("fedavg", "fedper", "fedprox") for seed in ("0", "1")]
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["scenario"], r["strategy"], r["seeds"]) for r in rows] == [
        ("balanced", strategy, "2") for strategy in ("fedavg", "fedper", "fedprox")]
    fedavg, fedper, fedprox = rows
    values = [float(r["i2t_recall@10"]) for r in per_seed[:2]]
    assert float(fedavg["i2t_recall@10"]) == pytest.approx(sum(values) / 2)
    # 95% t-interval with 1 degree of freedom: t = 12.706, sd of two values = |a - b| / sqrt(2)
    assert float(fedavg["i2t_recall@10_ci"]) == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-3)
    assert fedper["i2t_recall@10"] == ""  # FedPer has no global model
    assert fedper["hospital_worst_auroc_own"] != "" and float(fedavg["upload_kib"]) > 0
    assert float(fedavg["sample_passes"]) > 0
    # FedProx is tested against FedAvg, paired by seed; the baseline is not tested against itself
    differences = [float(b["zeroshot_auroc_macro"]) - float(a["zeroshot_auroc_macro"])
                   for a, b in zip(per_seed[:2], per_seed[4:])]
    assert float(fedprox["zeroshot_auroc_macro_diff"]) == pytest.approx(sum(differences) / 2)
    assert fedprox["zeroshot_auroc_macro_sig"] in ("-1", "0", "1") and fedavg["zeroshot_auroc_macro_diff"] == ""
    table = (tmp_path / "table.md").read_text()
    assert "### balanced" in table and "95% Student-t" in table and "sample passes" in table
    assert "| fedprox | 2 | " in (tmp_path / "differences.md").read_text()  # minus fedavg, paired by seed
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    first = (tmp_path / "cells" / "strategy=fedavg,seed=0" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli_main(arguments) == 0  # second time: every cell reused, nothing rerun
    assert capsys.readouterr().out.count("reusing") == 6
    assert (tmp_path / "cells" / "strategy=fedavg,seed=0" / "metrics.jsonl").read_text() == first
