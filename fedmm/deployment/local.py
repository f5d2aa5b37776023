"""A whole federation on one machine through Flower's Deployment Engine: a SuperLink and one SuperNode
per hospital folder on 127.0.0.1, the app submitted with `flwr run`, exactly as separate hospitals would
run it (each node reads only the folder named in its node config).

Every process is started in a process group of its own and stopped by that group's id, so the
processes Flower starts underneath (SuperExec, ServerApp, ClientApps) stop with their node.
"""

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmm.config import ConfigError, ExperimentConfig
from fedmm.data.export import SERVER_FOLDER
from fedmm.data.hospital_folder import validate_hospital_folder
from fedmm.deployment.tls import ServerCertificates, write_local_ca, write_node_keys

CONNECTION = "fedmm-local"  # the SuperLink connection's name in the federation's own FLWR_HOME
APP_DIR = Path(__file__).resolve().parents[2]  # the Flower app: pyproject.toml's [tool.flwr.app]
HOSPITAL_PREFIX = "hospital-"
FINISHED = "finished:"
COMPLETED = "finished:completed"


class DeploymentError(RuntimeError):
    """The local federation could not start or its run did not complete; the message names the log."""


@dataclass(frozen=True)
class FederationFolders:
    hospitals: list[Path]  # hospital-0, hospital-1, ... in id order: node i reads hospitals[i]
    server_test: Path


def find_folders(root: Path) -> FederationFolders:
    """The hospital folders (`hospital-<id>`, ids 0..n-1) and `server-test` under `root`, as written by
    `fedmm data export-synthetic`."""
    root = Path(root)
    hospitals = {}
    for folder in root.glob(f"{HOSPITAL_PREFIX}*"):
        suffix = folder.name.removeprefix(HOSPITAL_PREFIX)
        if folder.is_dir() and suffix.isdigit():
            hospitals[int(suffix)] = folder.resolve()
    if not hospitals:
        raise DeploymentError(f"no {HOSPITAL_PREFIX}<id> folders under {str(root)!r}; write some with "
                              f"`fedmm data export-synthetic --out {root}`")
    if sorted(hospitals) != list(range(len(hospitals))):
        raise DeploymentError(f"hospital folders under {str(root)!r} have ids {sorted(hospitals)}; they must be 0..n-1")
    server = root / SERVER_FOLDER
    if not server.is_dir():
        raise DeploymentError(f"no {SERVER_FOLDER}/ folder under {str(root)!r}: the server's global test set")
    return FederationFolders([hospitals[i] for i in range(len(hospitals))], server.resolve())


def check_folders(folders: FederationFolders, cfg: ExperimentConfig) -> None:
    """Before any process starts: the federation's size matches the folders and every folder is valid."""
    if cfg.scenario.num_hospitals != len(folders.hospitals):
        raise ConfigError(
            f"scenario.num_hospitals={cfg.scenario.num_hospitals}, but there are {len(folders.hospitals)} "
            f"hospital folders; for folders of your own pass scenario=deployment "
            f"scenario.num_hospitals={len(folders.hospitals)}; for exported ones, the options they were "
            "exported with"
        )
    for folder in [*folders.hospitals, folders.server_test]:
        problems = validate_hospital_folder(folder)
        if problems:
            raise DeploymentError(
                f"{folder}: {len(problems)} problem(s), the first: {problems[0]}; run `fedmm data validate {folder}`"
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hydra_value(path: Path) -> str:
    """A path as a Hydra override value (quoted: a path may hold `=` or `,`)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class LocalFederation:
    """`with LocalFederation(out, folders) as federation:` starts the SuperLink and one SuperNode per
    hospital folder; leaving the block stops them all. `out` receives the logs, FLWR_HOME, certificates
    and the run directory."""

    out: Path
    folders: FederationFolders
    tls: bool = False
    node_auth: bool = False  # SuperNode authentication (needs TLS): only registered public keys may connect
    startup_timeout_s: float = 60.0
    port: int = 0  # the SuperLink's (0: a free one)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    certificates: ServerCertificates | None = None
    run_dirs: dict[int, Path] = field(default_factory=dict)  # run id -> where its server writes

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()
        if self.node_auth and not self.tls:
            raise ConfigError("node authentication runs over TLS; pass --tls with --auth")
        self.home = self.out / "flwr-home"
        self.logs = self.out / "logs"
        self.bin = Path(sys.executable).parent
        for tool in ("flower-superlink", "flower-supernode", "flwr"):
            if not (self.bin / tool).exists():
                raise DeploymentError(
                    f"{tool} is not installed next to {sys.executable}; install fedmm there (`make install`)"
                )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def __enter__(self) -> "LocalFederation":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        security = ["--insecure"]
        if self.tls:
            self.certificates = write_local_ca(self.out / "certificates")
            security = [
                "--ssl-ca-certfile",
                str(self.certificates.ca_certificate),
                "--ssl-certfile",
                str(self.certificates.certificate),
                "--ssl-keyfile",
                str(self.certificates.private_key),
            ]
        self.write_connection()
        self.spawn(
            "superlink",
            [
                "flower-superlink",
                *security,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
                *(["--enable-supernode-auth"] if self.node_auth else []),
            ],
        )
        self.wait_for_port(self.port, "superlink")
        for hospital, folder in enumerate(self.folders.hospitals):
            node_security = (
                ["--root-certificates", str(self.certificates.ca_certificate)] if self.tls else ["--insecure"]
            )
            if self.node_auth:
                private, public = write_node_keys(self.out / "node-keys", f"{HOSPITAL_PREFIX}{hospital}")
                self.flwr(["supernode", "register", str(public), CONNECTION, "--format", "json"])
                node_security += ["--auth-supernode-private-key", str(private)]
            # The node config is the only thing that tells a node which hospital it is and where its data is.
            node_config = f'partition-id={hospital} data-dir="{folder}"'
            self.spawn(
                f"{HOSPITAL_PREFIX}{hospital}",
                [
                    "flower-supernode",
                    *node_security,
                    "--superlink",
                    self.address,
                    "--port",
                    str(free_port()),
                    "--node-config",
                    node_config,
                ],
            )

    def write_connection(self) -> None:
        """The `flwr` CLI's connection to this SuperLink, in this federation's own FLWR_HOME."""
        security = f'root-certificates = "{self.certificates.ca_certificate}"\n' if self.tls else "insecure = true\n"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}'
        )

    def spawn(self, name: str, command: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(
            [str(self.bin / command[0]), *command[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()  # the child holds its own handle

    def wait_for_port(self, port: int, name: str) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise DeploymentError(
                    f"{name} exited with code {self.processes[name].returncode}; see {self.logs / name}.log"
                )
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(
            f"{name} did not open port {port} within {self.startup_timeout_s:g} s; see {self.logs / name}.log"
        )

    def flwr(self, arguments: list[str], timeout_s: float = 120.0) -> dict:
        """Run the `flwr` CLI against this SuperLink; its JSON answer."""
        completed = subprocess.run(
            [str(self.bin / "flwr"), *arguments],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.out,
        )
        try:
            answer = json.loads(completed.stdout)
        except json.JSONDecodeError:
            answer = {"success": False, "error-message": (completed.stdout + completed.stderr)[-2000:]}
        if completed.returncode != 0 or not answer.get("success", False):
            raise DeploymentError(f"`flwr {shlex.join(arguments)}` failed: {answer.get('error-message', answer)}")
        return answer

    def submit(self, overrides: Sequence[str], run_dir: Path) -> int:
        """Start the app with `overrides` (Hydra) on this federation; the run id. The server reads its
        global test set from the server folder and writes its outputs to `run_dir`."""
        everything = [
            *overrides,
            f"deployment.server_test_dir={hydra_value(self.folders.server_test)}",
            f"run_dir={hydra_value(run_dir)}",
        ]
        run_config = self.out / "run-config.toml"
        run_config.write_text(f'experiment = ""\noverrides = {json.dumps(shlex.join(everything))}\n')
        answer = self.flwr(["run", str(APP_DIR), CONNECTION, "--run-config", str(run_config), "--format", "json"])
        run_id = int(answer["run-id"])
        self.run_dirs[run_id] = Path(run_dir)
        return run_id

    def status(self, run_id: int) -> tuple[str, str]:
        """(status, details) of a run, as the SuperLink reports it."""
        runs = self.flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], timeout_s=60)["runs"]
        return runs[0]["status"], runs[0].get("status-details", "")

    def wait(
        self, run_id: int, timeout_s: float, on_poll: Callable[[], None] | None = None, poll_s: float = 30.0
    ) -> tuple[str, str]:
        """Until the run finishes (any `finished:*` status) or `timeout_s` passes: `on_poll` twice a second.
        The status is asked of the SuperLink every `poll_s` and every 2 s once the server has written its
        summary.json (its last act); each check starts the `flwr` CLI, about 1.7 s of CPU the nodes need."""
        deadline = time.monotonic() + timeout_s
        summary = self.run_dirs[run_id] / "summary.json" if run_id in self.run_dirs else None
        checked = -math.inf
        while True:
            if on_poll is not None:
                on_poll()
            due = poll_s if summary is None or not summary.exists() else min(poll_s, 2.0)
            if time.monotonic() - checked >= due or time.monotonic() > deadline:
                checked = time.monotonic()
                status, details = self.status(run_id)
                if status.startswith(FINISHED):
                    return status, details
                if checked > deadline:
                    raise DeploymentError(f"run {run_id} still {status!r} after {timeout_s:g} s; see {self.logs}")
            time.sleep(0.5)

    def kill_hospital(self, hospital: int) -> None:
        """Kill hospital `hospital`'s SuperNode and everything under it at once, as a crash would."""
        self._signal(f"{HOSPITAL_PREFIX}{hospital}", signal.SIGKILL)
        self.processes[f"{HOSPITAL_PREFIX}{hospital}"].wait()

    def process_groups(self) -> list[int]:
        return [process.pid for process in self.processes.values()]  # each leads its own group

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every process this federation started, by process group: SIGTERM, then SIGKILL after `grace_s`."""
        names = sorted(self.processes, key=lambda name: name == "superlink")  # the nodes first, the SuperLink last
        for name in names:
            self._signal(name, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive_in_groups(self.process_groups()):
            time.sleep(0.2)
        for name in names:
            self._signal(name, signal.SIGKILL)
        for process in self.processes.values():
            process.wait()  # reap the direct children; their descendants are gone with their groups

    def _signal(self, name: str, signum: int) -> None:
        try:
            os.killpg(self.processes[name].pid, signum)
        except ProcessLookupError:
            pass


def alive_in_groups(groups: Sequence[int]) -> list[int]:
    """Pids of live (not zombie) processes in the given process groups (Linux /proc)."""
    wanted, alive = set(groups), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group in wanted and state != "Z":
            alive.append(int(entry.name))
    return alive
