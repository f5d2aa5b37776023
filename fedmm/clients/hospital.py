"""What a hospital does with a message's heads, in plain PyTorch: train them or evaluate them locally.

A `HospitalRuntime` (features, model object, device) is built once per process and reused by every
message, so no message rebuilds the model or reloads data.
"""

import hashlib
import json
from dataclasses import dataclass

import torch

from fedmm.config import ExperimentConfig, config_to_dict
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.hospitals import FederatedData, HospitalData, load_federated_data
from fedmm.models.features import resolve_device
from fedmm.models.heads import ContrastiveHeads, build_heads
from fedmm.seeding import LOCAL_TRAIN_STREAM, derive_seed
from fedmm.strategies import messages as keys
from fedmm.training.local import train_heads


@dataclass
class HospitalRuntime:
    cfg: ExperimentConfig
    data: HospitalData
    heads: ContrastiveHeads  # reused; each message loads its weights into it
    prompts: Prompts
    device: torch.device


_DATA: dict[str, FederatedData] = {}
_RUNTIMES: dict[tuple[str, int], HospitalRuntime] = {}


def config_digest(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def hospital_runtime(cfg: ExperimentConfig, hospital_id: int) -> HospitalRuntime:
    """The process-wide runtime of `hospital_id` under `cfg`, built on first use."""
    digest = config_digest(cfg)
    if (digest, hospital_id) not in _RUNTIMES:
        # One simulated hospital gets `client_cpus` cores; more torch threads would oversubscribe them.
        torch.set_num_threads(max(1, int(cfg.simulation.client_cpus)))
        if digest not in _DATA:
            _DATA[digest] = load_federated_data(cfg)
        data = _DATA[digest]
        if not 0 <= hospital_id < data.num_hospitals:
            raise ValueError(f"partition-id {hospital_id} is outside the federation's {data.num_hospitals} hospitals")
        device = resolve_device(cfg.device if cfg.simulation.client_gpus > 0 or cfg.device == "cuda" else "cpu")
        heads = build_heads(data.image_dim, data.report_dim, cfg.heads, seed=0).to(device)
        _RUNTIMES[(digest, hospital_id)] = HospitalRuntime(
            cfg, data.hospital(hospital_id), heads, Prompts.from_features(data.features), device)
    return _RUNTIMES[(digest, hospital_id)]


def describe(runtime: HospitalRuntime) -> dict[str, float]:
    """The hospital's id and sample counts, as answered to the server's discovery query."""
    train = runtime.data.train
    return {keys.HOSPITAL_ID: runtime.data.hospital_id, keys.NUM_EXAMPLES: len(train),
            "num-paired": int(train.paired_mask.sum()), "num-image": int(train.image_mask.sum()),
            "num-report": int(train.report_mask.sum())}


def train_round(runtime: HospitalRuntime, state: dict[str, torch.Tensor],
                server_round: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Local training of the global heads `state`; returns the new state and the reply metrics."""
    runtime.heads.load_state_dict(state)
    seed = derive_seed(runtime.cfg.seed, LOCAL_TRAIN_STREAM, server_round, runtime.data.hospital_id)
    result = train_heads(runtime.heads, runtime.data.train, runtime.cfg.train, seed, runtime.device)
    metrics = {
        keys.HOSPITAL_ID: runtime.data.hospital_id,
        keys.NUM_EXAMPLES: len(runtime.data.train),
        keys.NUM_PAIRED_USED: result.num_paired_used,
        keys.NUM_IMAGE_USED: result.num_image_used,
        keys.NUM_REPORT_USED: result.num_report_used,
        keys.TRAIN_STEPS: result.steps,
        keys.TRAIN_LOSS: result.loss if result.steps else 0.0,
    }
    return {key: value.detach().cpu() for key, value in runtime.heads.state_dict().items()}, metrics


def evaluate_round(runtime: HospitalRuntime, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metrics of the global heads `state` on this hospital's local test split."""
    runtime.heads.load_state_dict(state)
    metrics = evaluate_split(runtime.heads, runtime.data.test, runtime.prompts)
    return {keys.HOSPITAL_ID: runtime.data.hospital_id, keys.NUM_EXAMPLES: len(runtime.data.test), **metrics}

