"""`flwr run .` runs the same ServerApp and ClientApp as `fedmm run`, configured by name and overrides."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import stop_processes_mentioning

from fedmm.compose import compose_config
from fedmm.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[2]  # the repository (its pyproject.toml names the app)


@pytest.mark.slow
def test_flwr_run_matches_fedmm_run(tmp_path, cache_dir):
    flwr = Path(sys.executable).parent / "flwr"
    if not flwr.exists():
        pytest.skip("the flwr command is not installed next to this Python")
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedmm-smoke"\n\n[superlink.fedmm-smoke]\naddress = ":local:"\n')
    env = os.environ | {"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                        "PATH": f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_dir = tmp_path / "flwr-run"
    overrides = f"cache_dir={cache_dir} run_dir={run_dir}"
    try:
        completed = subprocess.run(
            [str(flwr), "run", str(ROOT), "fedmm-smoke", "--stream",
             "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
             "--run-config", f'experiment="smoke" overrides="{overrides}"'],
            env=env, capture_output=True, text=True, timeout=400)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        listing = subprocess.run([str(flwr), "ls", "fedmm-smoke", "--format", "json"], env=env,
                                 capture_output=True, text=True, timeout=60)
        runs = json.loads(listing.stdout)["runs"]
        assert [run["status"] for run in runs] == ["finished:completed"]  # --stream exits 0 even on failure
    finally:
        survivors = stop_processes_mentioning(str(home))  # the background SuperLink outlives `flwr run`
    assert not survivors
    reference = tmp_path / "fedmm-run"
    # `fedmm run` on the in-process engine (test_end_to_end: it writes what the Ray engine writes)
    run_experiment(compose_config(["+experiment=smoke", f"cache_dir={cache_dir}", f"run_dir={reference}",
                                   "simulation.engine=inprocess"]))
    assert (run_dir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
