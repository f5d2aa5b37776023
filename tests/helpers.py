"""What tests build from: what a user gets (composed from configs/), changed where a test says; tiny seeded
heads and splits; hand-made training replies."""

import dataclasses
import hashlib
import json
import os
import signal
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedmm import protocol as keys
from fedmm.compose import compose_config
from fedmm.config import ExperimentConfig
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.federation import SplitTensors
from fedmm.models.heads import build_heads
from fedmm.strategies import strategy_spec
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.roster import Roster
from fedmm.training.updates import LocalStep, snapshot


@lru_cache
def user_config(*overrides: str) -> ExperimentConfig:
    """`fedmm run OVERRIDES`'s configuration (composed once per set of overrides)."""
    return compose_config(list(overrides))


def configured(section: str, *overrides: str, **changes: Any) -> Any:
    """The dotted `section` (e.g. "privacy.sample") of `user_config(*overrides)`, with `changes` replaced."""
    value: Any = user_config(*overrides)
    for name in section.split("."):
        value = getattr(value, name)
    return dataclasses.replace(value, **changes)


# Tiny seeded models and data (6-d image features, 5-d report features, 10 findings)

HEADS = configured("heads", hidden_dim=8, embed_dim=4)


def tiny_split(num: int = 24, paired: bool = True) -> SplitTensors:
    generator = torch.Generator().manual_seed(0)
    code = AVAILABILITY_CODES[Availability.PAIRED if paired else Availability.IMAGE_ONLY]
    return SplitTensors(torch.randn(num, 6, generator=generator), torch.randn(num, 5, generator=generator),
                        torch.full((num,), code, dtype=torch.int8), torch.zeros(num, 10, dtype=torch.int8))


def heads(seed: int = 0):
    return build_heads(6, 5, HEADS, seed)


@lru_cache
def tiny_cfg(strategy: str = "fedavg", *options: str) -> ExperimentConfig:
    """What a user gets for `strategy`, with tiny training settings and the given strategy options."""
    return compose_config([f"strategy={strategy}", "train.local_epochs=2", "train.batch_size=8", "train.lr=0.01",
                           *options])


def tiny_step(model, data, seed: int, strategy: str = "fedavg", *options: str, personal_model=None,
              server_arrays=None) -> LocalStep:
    """A hospital's `LocalStep` on `data` with `tiny_cfg(strategy, *options)`."""
    cfg = tiny_cfg(strategy, *options)
    return LocalStep(cfg, strategy_spec(strategy).parse_options(cfg), model, personal_model or heads(9),
                     snapshot(heads()), data, seed, torch.device("cpu"), missing=None,
                     server_arrays=server_arrays or {})


# Hand-made training replies and a strategy over a few hospitals (tests build Messages: flower_run_identity)

def state(image: list[float], report: list[float], scale: float) -> dict[str, np.ndarray]:
    return {"image_head.0.weight": np.array(image, dtype=np.float32),
            "report_head.0.weight": np.array(report, dtype=np.float32),
            "logit_scale": np.array(scale, dtype=np.float32)}


def reply(
    hospital: int, arrays: dict[str, np.ndarray], num_examples: int, paired: int, images: int, reports: int
) -> Message:
    metrics = MetricRecord(
        {
            keys.HOSPITAL_ID: hospital,
            keys.NUM_EXAMPLES: num_examples,
            keys.NUM_PAIRED_USED: paired,
            keys.NUM_IMAGE_USED: images,
            keys.NUM_REPORT_USED: reports,
            keys.TRAIN_STEPS: 1 if paired else 0,
            keys.TRAIN_LOSS: 1.0,
        }
    )
    content = RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}), keys.METRICS: metrics})
    return Message(content=content, dst_node_id=0, message_type="train")


def roster(num_hospitals: int = 3, **settings) -> Roster:
    """Hospitals 0..n-1 on nodes 100.., all sampled every round, one round evaluated; `settings` change that."""
    return Roster(**{"node_of_hospital": {h: 100 + h for h in range(num_hospitals)}, "clients_per_round": num_hospitals,
                     "seed": 0, "evaluate_every": 1, "num_rounds": 1} | settings)


ROSTER_SETTINGS = {"clients_per_round", "evaluate_every", "num_rounds", "stop_run_at_budget", "min_hospitals",
                   "round_timeout_s"}


def strategy(cls=HospitalFedAvg, num_hospitals: int = 3, **kwargs):
    """`cls` over `roster(num_hospitals)`; keyword arguments go to the roster or to the strategy by name."""
    settings = {key: kwargs.pop(key) for key in ROSTER_SETTINGS & set(kwargs)}
    return cls(roster(num_hospitals, **settings), **kwargs)


def session_dir(tmp_path_factory, name: str) -> tuple[Path, FileLock]:
    """A folder every xdist worker of this test session shares (a new one each session), and a lock for
    building it once: `with lock: if not built: build`."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # workers' basetemps are siblings
    return root / name, FileLock(str(root / f"{name}.lock"))


# What leaves a hospital in a whole run (a Flower mod for `run_experiment(cfg, client_mods=[...])`)

def fingerprint(array) -> str:
    values = array.numpy()
    return hashlib.sha256(f"{values.dtype}{values.shape}".encode() + values.tobytes()).hexdigest()


def make_audit_mod(folder):
    """A Flower mod that writes down, for every message a hospital answers: what came in, every record of
    the reply, and the hospital's private state afterwards (hashes of array values)."""

    def audit(msg, context, call_next):
        stage = msg.content.config_records.get("secaggplus_configs", {}).get("stage")  # before a mod pops it
        reply = call_next(msg, context)
        personal = context.state.array_records.get(keys.PERSONAL)
        entry = {
            "hospital": int(context.node_config["partition-id"]),
            "type": msg.metadata.message_type,
            "round": int(msg.content.config_records.get(keys.CONFIG, {}).get(keys.SERVER_ROUND, 0)),
            "secagg_stage": stage,
            "received": [fingerprint(a) for record in msg.content.array_records.values() for a in record.values()],
            "reply_records": {name: type(record).__name__ for name, record in reply.content.items()},
            "reply_arrays": {  # "<record>/<array>"
                f"{name}/{key}": fingerprint(a) for name, record in reply.content.array_records.items()
                for key, a in record.items()
            },
            "reply_shapes": {
                f"{name}/{key}": list(a.shape) for name, record in reply.content.array_records.items()
                for key, a in record.items()
            },
            "personal": {key: fingerprint(a) for key, a in personal.items()} if personal is not None else None,
        }
        (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps(entry))
        return reply

    return audit


# --- processes a test started outside Python (Flower's SuperLink, Ray nodes) -----------------------------------

def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first, then the parent); [] once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Running processes whose command line contains `text`, and everything they started."""
    roots = {pid for pid in all_pids() if text in command_line(pid)}
    parents = {pid: int(fields[1]) for pid in all_pids() if len(fields := proc_stat(pid)) > 1}
    found = set(roots)
    while more := {pid for pid, ppid in parents.items() if ppid in found and pid not in found}:
        found |= more
    return sorted(pid for pid in found if running(pid))


def stop_processes_mentioning(text: str, grace_s: float = 10.0, deadline_s: float = 20.0) -> list[int]:
    """SIGTERM what `processes_mentioning(text)` finds, SIGKILL what is left after `grace_s`, and return what
    still runs at `deadline_s`. It scans again on every pass: a process may exit between the scan and the
    signal, and a dying server may still start a child."""
    start = time.monotonic()
    while (pids := processes_mentioning(text)) and (elapsed := time.monotonic() - start) < deadline_s:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM if elapsed < grace_s else signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return processes_mentioning(text)
