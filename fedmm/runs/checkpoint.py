"""The server's state after a round, so an interrupted or extended run continues where it stopped.

`run_dir/checkpoint.npz` holds the global model (`global/<parameter>`) and the server optimizer's moments
(`optimizer/<moment>/<parameter>`); `run_dir/checkpoint.json` the round, the optimizer's step counts,
retired hospitals and the client-level privacy accountants. Both are replaced atomically after every
round. What hospitals keep (their DP-SGD ledger) stays with them, in their own state folder.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmm.config import ConfigError

ARRAYS_FILE, STATE_FILE = "checkpoint.npz", "checkpoint.json"


@dataclass
class Checkpoint:
    server_round: int  # the last finished round
    global_arrays: dict[str, np.ndarray]
    optimizer_moments: dict[str, np.ndarray] = field(default_factory=dict)
    optimizer_steps: dict[str, int] = field(default_factory=dict)
    retired: dict[int, str] = field(default_factory=dict)
    accountants: dict[int, dict[str, Any]] = field(default_factory=dict)  # Flower RdpAccountant.state_dict()


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    arrays = {f"global/{key}": value for key, value in checkpoint.global_arrays.items()}
    arrays |= {f"optimizer/{key}": value for key, value in checkpoint.optimizer_moments.items()}
    state = {"server_round": checkpoint.server_round, "optimizer_steps": checkpoint.optimizer_steps,
             "retired": {str(h): reason for h, reason in checkpoint.retired.items()},
             "accountants": {str(h): state for h, state in checkpoint.accountants.items()}}
    temporary = run_dir / f".{ARRAYS_FILE}.tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, run_dir / ARRAYS_FILE)
    (run_dir / f".{STATE_FILE}.tmp").write_text(json.dumps(state))
    os.replace(run_dir / f".{STATE_FILE}.tmp", run_dir / STATE_FILE)  # written last: it names the round


def load_checkpoint(run_dir: Path) -> Checkpoint:
    state_path, arrays_path = run_dir / STATE_FILE, run_dir / ARRAYS_FILE
    if not state_path.exists() or not arrays_path.exists():
        raise ConfigError(f"resume: {str(run_dir)!r} has no checkpoint ({STATE_FILE}, {ARRAYS_FILE}); "
                          "it is not a federated run that finished a round")
    state = json.loads(state_path.read_text())
    with np.load(arrays_path) as arrays:
        global_arrays = {key.removeprefix("global/"): arrays[key] for key in arrays.files if key.startswith("global/")}
        moments = {key.removeprefix("optimizer/"): arrays[key] for key in arrays.files if key.startswith("optimizer/")}
    return Checkpoint(int(state["server_round"]), global_arrays, moments, dict(state["optimizer_steps"]),
                      {int(h): reason for h, reason in state["retired"].items()},
                      {int(h): accountant for h, accountant in state["accountants"].items()})
