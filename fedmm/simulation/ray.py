"""The Ray engine: Flower's Simulation Engine, reached the way `flwr run` reaches it.

Flower 1.41 deprecates its in-Python entry point (`flwr.simulation.run_simulation`); the supported path
is a SuperLink in simulation mode and `flwr run`. For each run, fedmm:

1. writes the resolved config and a one-file Flower App (`pyproject.toml` naming fedmm's ServerApp and
   ClientApp) to a private work folder, with a private `FLWR_HOME` that names one connection;
2. starts its own `flower-superlink --simulation` on a free loopback port (state in memory), so runs
   beside each other do not share one, and nothing outlives the run;
3. submits the run with `flwr run APP --federation-config "num-supernodes=N ..." --run-config
   'config-file="..."'`: Flower starts the simulation process, Ray, and one actor per hospital slot;
4. follows the run through the run directory's `metrics.jsonl` (the progress callback) and, when
   `flwr run` returns, asks the SuperLink how the run ended (`flwr ls`: `--stream` exits 0 on failure);
5. stops the SuperLink's process group, which takes the simulation process and Ray with it.

The summary is the run directory's `summary.json`, the same file the in-process engine writes. Flower's
logs are copied into the run directory (`flower.log`) when the run fails.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import yaml

from fedmm.config import ExperimentConfig, config_to_dict
from fedmm.runs.recorder import RoundCallback
from fedmm.simulation import SimulationFailed

CONNECTION = "fedmm"
STARTUP_TIMEOUT_S = 60.0
POLL_S = 0.5
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedmm-run"
version = "1.0.0"

[tool.flwr.app]
publisher = "fedmm"

[tool.flwr.app.components]
serverapp = "fedmm.server.app:app"
clientapp = "fedmm.clients.app:app"

[tool.flwr.app.config]
experiment = ""
overrides = ""
config-file = ""
"""


def federation_config(cfg: ExperimentConfig, verbose: bool = False) -> dict[str, object]:
    """Flower's simulation settings: one node per hospital; each gets `client_cpus` CPUs and
    `client_gpus` of a GPU (fractions share one). A private Ray instance may use every core and visible
    GPU of this machine; an existing cluster (`simulation.ray_address`) offers what its nodes declared,
    and Ray refuses resource counts when attaching to one."""
    settings: dict[str, object] = {
        "num-supernodes": cfg.scenario.num_hospitals,
        "client-resources-num-cpus": cfg.simulation.client_cpus,
        "client-resources-num-gpus": float(cfg.simulation.client_gpus),
        "init-args-log-to-driver": verbose,
        "verbose": verbose,
    }
    if not cfg.simulation.ray_address:
        settings["init-args-num-cpus"] = os.cpu_count() or 1
        settings["init-args-num-gpus"] = torch.cuda.device_count() if cfg.simulation.client_gpus > 0 else 0
    return settings


def ray_environment(cfg: ExperimentConfig) -> dict[str, str]:
    """What tells `ray.init` in Flower's simulation process where Ray is: the cluster to attach to, or
    `local` (a new private instance, even where an earlier `ray start` left a cluster behind, which
    `ray.init` would otherwise join)."""
    return {"RAY_ADDRESS": cfg.simulation.ray_address or "local"}


def run_on_ray(cfg: ExperimentConfig, on_round: RoundCallback | None = None, verbose: bool = False) -> dict:
    """Run `cfg` (its `run_dir` set) on Flower's Simulation Engine; returns the run's summary."""
    run_dir = Path(cfg.run_dir)
    with tempfile.TemporaryDirectory(prefix="fedmm-flower-") as work_dir:
        work = Path(work_dir)
        (work / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        (work / "app").mkdir()
        (work / "app" / "pyproject.toml").write_text(APP_PYPROJECT)
        port = free_port()
        (work / "home").mkdir()
        (work / "home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n')
        env = os.environ | {"FLWR_HOME": str(work / "home"), "FLWR_TELEMETRY_ENABLED": "0",
                            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                            **ray_environment(cfg),
                            # the SuperLink starts Flower's other commands (flower-superexec, flwr-simulation) by name
                            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        superlink = start_superlink(port, work, env)
        try:
            status = submit_and_follow(cfg, work, env, run_dir, on_round, verbose)
        finally:
            stop_process_group(superlink)
        if status != "finished:completed":
            log_path = keep_logs(work, run_dir)
            raise SimulationFailed(f"the simulation ended as {status!r}: {last_error(work / 'flwr-run.log')}; "
                                   f"Flower's log: {log_path}")
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise SimulationFailed(f"the simulation ended without writing {summary_path}")
    return json.loads(summary_path.read_text()) | {"run_dir": str(run_dir)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def flower_command(name: str) -> str:
    """A Flower console script installed next to this Python (the virtual environment's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeError(f"{path} not found: the Ray engine needs Flower's `{name}` command in this environment "
                           "(pip install 'flwr[simulation]'), or use simulation.engine=inprocess")
    return str(path)


def start_superlink(port: int, work: Path, env: dict[str, str]) -> subprocess.Popen:
    """A SuperLink in simulation mode on 127.0.0.1:`port`, in its own process group; returns once healthy."""
    command = [flower_command("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
               "--port", str(port), "--disable-runtime-dependency-installation"]
    with open(work / "superlink.log", "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}: "
                               f"{(work / 'superlink.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    stop_process_group(process)
    raise RuntimeError(f"flower-superlink did not answer on 127.0.0.1:{port} within {STARTUP_TIMEOUT_S:.0f} s")


def submit_and_follow(cfg: ExperimentConfig, work: Path, env: dict[str, str], run_dir: Path,
                      on_round: RoundCallback | None, verbose: bool) -> str:
    """`flwr run` the app; report each round as it lands in metrics.jsonl; returns the run's final status."""
    settings = " ".join(f"{key}={json.dumps(value)}" for key, value in federation_config(cfg, verbose).items())
    command = [flower_command("flwr"), "run", str(work / "app"), CONNECTION, "--stream",
               "--federation-config", settings, "--run-config", f"config-file={json.dumps(str(work / 'config.yaml'))}"]
    reported = 0
    with open(work / "flwr-run.log", "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=None if verbose else log_file,
                                   stderr=None if verbose else subprocess.STDOUT)
        try:
            while True:
                finished = process.poll() is not None
                reported = report_new_rounds(run_dir / "metrics.jsonl", reported, on_round)
                if finished:
                    break
                time.sleep(POLL_S)
        except BaseException:  # Ctrl-C: stop `flwr run`; the SuperLink is stopped by the caller
            process.terminate()
            raise
    listing = subprocess.run([flower_command("flwr"), "ls", CONNECTION, "--format", "json"], env=env,
                             capture_output=True, text=True, timeout=120)
    try:
        runs = json.loads(listing.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        return f"unknown (flwr ls: {shlex.quote(listing.stdout[-500:] + listing.stderr[-500:])})"
    return runs[0]["status"] if len(runs) == 1 else f"unknown ({len(runs)} runs on the SuperLink)"


def report_new_rounds(metrics_path: Path, reported: int, on_round: RoundCallback | None) -> int:
    """Call `on_round` for each complete line of metrics.jsonl after the first `reported`; returns the count."""
    if on_round is None or not metrics_path.exists():
        return reported
    lines = metrics_path.read_text().splitlines(keepends=True)
    complete = [line for line in lines if line.endswith("\n")]
    for line in complete[reported:]:
        record = json.loads(line)
        on_round(record["round"], record)
    return max(reported, len(complete))


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process's group (the SuperLink, its simulation process, Ray), SIGKILL what remains."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def keep_logs(work: Path, run_dir: Path) -> Path:
    """Flower's logs of a failed run, kept in the run directory (the temporary folder goes)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "flower.log"
    parts = [f"==> {name} <==\n{(work / name).read_text()}" for name in ("flwr-run.log", "superlink.log")
             if (work / name).exists()]
    target.write_text("\n".join(parts))
    return target


EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception): .+")  # `ValueError: ...`, a traceback's last line


def last_error(log_path: Path) -> str:
    """The root cause a log names: its first exception line (`SomeError: ...`, what a traceback ends with),
    else its last line that mentions an error, else its last line."""
    if not log_path.exists():
        return "no log"
    lines = [line.strip() for line in log_path.read_text().splitlines() if line.strip()]
    for line in lines:
        if EXCEPTION_LINE.match(line):
            return line
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or "Lost" in line:
            return line
    return lines[-1] if lines else "empty log"
