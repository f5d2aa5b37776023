"""Shared fixtures: a tiny composed config whose caches live in one temporary folder per test session,
shared by the session's xdist workers."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# One torch thread per process (before torch is imported): three xdist workers and their Flower processes
# share two cores, and oversubscribed OpenMP threads spin rather than work (a 3 s test took 55 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from helpers import session_dir  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One feature cache for the session: each worker would otherwise extract the same features (the cache
    is safe to share: an extraction holds a file lock, and files appear whole)."""
    path, lock = session_dir(tmp_path_factory, "fedmm-cache")
    with lock:
        path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smoke_overrides(cache_dir):
    """Hydra overrides for the 3-hospital, 2-round smoke experiment with an isolated cache, on the in-process
    engine (no Ray start-up per run; `test_end_to_end` shows it writes what the Ray engine writes)."""
    return ["+experiment=smoke", f"cache_dir={cache_dir}", "simulation.engine=inprocess"]


@pytest.fixture
def flower_run_identity(monkeypatch):
    """Messages can only be built inside a Flower run; give this process one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
