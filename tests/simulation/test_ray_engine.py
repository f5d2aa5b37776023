"""The Ray engine's own logic: the progress it reads from metrics.jsonl, what it refuses, what a failure names.
Whole Ray runs are in tests/test_experiment.py and tests/server/test_flwr_run.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmm.compose import compose_config
from fedmm.config import ConfigError
from fedmm.simulation import run_in_simulation
from fedmm.simulation.ray import federation_config, last_error, ray_environment, report_new_rounds


def test_progress_reports_each_complete_line_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    seen = []

    def on_round(server_round, line):
        seen.append((server_round, line["sampled"]))

    assert report_new_rounds(path, 0, on_round) == 0  # no file yet: the run has not started
    path.write_text(json.dumps({"round": 1, "sampled": [0, 1]}) + "\n" + '{"round": 2, "samp')  # round 2 half-written
    reported = report_new_rounds(path, 0, on_round)
    assert reported == 1 and seen == [(1, [0, 1])]
    lines = [{"round": 1, "sampled": [0, 1]}, {"round": 2, "sampled": [2]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert report_new_rounds(path, reported, on_round) == 2 and seen == [(1, [0, 1]), (2, [2])]


def test_flower_gets_one_node_per_hospital_and_whole_cpus(smoke_overrides):
    cfg = compose_config([*smoke_overrides, "scenario.num_hospitals=4", "simulation.client_cpus=2"])
    settings = federation_config(cfg)
    assert settings["num-supernodes"] == 4 and settings["client-resources-num-cpus"] == 2
    assert settings["client-resources-num-gpus"] == 0.0 and settings["init-args-num-gpus"] == 0
    with pytest.raises(ConfigError, match="simulation.client_cpus must be int, got 1.5"):
        compose_config([*smoke_overrides, "simulation.client_cpus=1.5"])  # Flower takes whole CPUs


def test_client_mods_need_the_in_process_engine(smoke_overrides):
    cfg = compose_config([*smoke_overrides, "simulation.engine=ray"])
    with pytest.raises(ConfigError, match="client mods .* only on simulation.engine=inprocess"):
        run_in_simulation(cfg, client_mods=[lambda message, context, call_next: call_next(message, context)])


def test_a_failure_names_the_exception_from_flowers_log(tmp_path):
    log = tmp_path / "flwr-run.log"
    log.write_text("Using SuperLink: fedmm\nTraceback (most recent call last):\n"
                   "fedmm.strategies.base.HospitalsLost: round 2: hospital(s) [1] failed\nINFO : \n")
    assert last_error(log) == "fedmm.strategies.base.HospitalsLost: round 2: hospital(s) [1] failed"
    assert last_error(tmp_path / "missing.log") == "no log"


def test_a_failure_names_the_root_cause_not_the_last_words(tmp_path):
    log = tmp_path / "flwr-run.log"
    log.write_text("ERROR :     An exception occured!! ActorPool is empty.\nTraceback (most recent call last):\n"
                   "ValueError: ActorPool is empty. Stopping Simulation.\n"
                   "RuntimeError: An error was encountered. Ending simulation.\n")
    assert last_error(log) == "ValueError: ActorPool is empty. Stopping Simulation."


def test_attaching_to_a_ray_cluster_passes_its_address_and_no_resource_counts(smoke_overrides, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    private = compose_config(smoke_overrides)
    assert private.simulation.ray_address is None and ray_environment(private) == {"RAY_ADDRESS": "local"}
    assert federation_config(private)["init-args-num-cpus"] >= 1
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # as `ray start --head` tells a shell to set
    attached = compose_config(smoke_overrides)
    assert ray_environment(attached) == {"RAY_ADDRESS": "127.0.0.1:6379"}
    settings = federation_config(attached)
    assert "init-args-num-cpus" not in settings and "init-args-num-gpus" not in settings  # Ray refuses them


@pytest.mark.slow
def test_a_crashed_simulation_runtime_ends_fedmm_run_with_its_cause(smoke_overrides, tmp_path):
    # More CPUs per hospital than the machine has: Flower's Ray backend raises while building its actor pool.
    too_many = (os.cpu_count() or 1) + 1
    command = [str(Path(sys.executable).parent / "fedmm"), "run", *smoke_overrides, "simulation.engine=ray",
               f"simulation.client_cpus={too_many}", f"run_dir={tmp_path / 'run'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)  # a hang fails here
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, output
    assert "simulation failed:" in output and "ActorPool is empty" in output
    assert (tmp_path / "run" / "flower.log").exists()  # Flower's log is kept next to the run
