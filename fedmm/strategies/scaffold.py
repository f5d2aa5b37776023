"""SCAFFOLD: FedAvg with control variates that correct each hospital's drift toward its own optimum.

Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning" (ICML), Algorithm 1 with option II and global step size η_g = 1. Each hospital i keeps
a control variate c_i (private state, kept across rounds, zero at first); the server keeps c. A sampled
hospital starts from the global heads x and takes K local SGD steps

    y ← y - η_l (g_i(y) - c_i + c),

then sets c_i⁺ = c_i - c + (x - y) / (K η_l) and sends y and Δc_i = c_i⁺ - c_i (the `control-variates`
record, the only array it sends besides its heads). The server averages the heads as FedAvg does (or
per head group, modality-aware) and sets c ← c + (1/N) Σ_i Δc_i over the N hospitals of the federation
(modality-aware: c of each head group is the mean c_i of the hospitals that have trained it).

The local optimizer is plain SGD with `strategy.local_lr`, as in the paper: the correction is defined for
SGD steps (AdamW's normalization would change what c_i estimates). A parameter that got no gradient in
the whole local training, such as the report head of an image-only hospital, is not corrected and its
c_i is left unchanged, so an untouched head neither moves nor updates its variate. The server learns
each Δc_i, hence each c_i: an average of the hospital's gradients, as sensitive as its update.
"""

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from fedmm import protocol as keys
from fedmm.config import ConfigError
from fedmm.models.heads import HeadGroup, head_group
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.fedavg import build_averaging
from fedmm.strategies.roster import hospital_of
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, snapshot


@dataclass(frozen=True)
class ScaffoldOptions:
    local_lr: float  # η_l, the local SGD step size


class Scaffold(HospitalFedAvg):
    """FedAvg's averaging, plus the server control variate c sent with the heads and updated from the Δc_i.

    c is the mean of the hospitals' c_i: over all N hospitals (the paper, `modality_aware=false`), or per
    head group over the hospitals that have trained that group (`modality_aware=true`), so a federation
    with image-only hospitals does not shrink the report head's c toward their zero variates."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.control_total: dict[str, np.ndarray] | None = None  # Σ_i c_i over every hospital (float64)
        self.trainers: dict[HeadGroup, set[int]] = {group: set() for group in HeadGroup}  # who has a c_i for it

    @property
    def control(self) -> dict[str, np.ndarray]:
        """c, per array: Σ c_i divided by N, or (modality-aware) by the hospitals that trained its head group."""
        assert self.control_total is not None
        hospitals = self.roster.num_hospitals
        return {key: np.asarray(total / (max(1, len(self.trainers[head_group(key)])) if self.modality_aware
                                         else hospitals), dtype=np.float32)
                for key, total in self.control_total.items()}

    def train_extras(self) -> dict[str, ArrayRecord]:
        assert self.current_arrays is not None
        if self.control_total is None:  # every c_i starts at zero
            self.control_total = {key: np.zeros(array.numpy().shape, dtype=np.float64)
                                  for key, array in self.current_arrays.items()}
        return {keys.CONTROL_VARIATES: ArrayRecord({key: Array(value) for key, value in self.control.items()})}

    def fold(self, average, reply: Message) -> None:
        super().fold(average, reply)
        _, counts = self.reply_weights(reply)
        for group in HeadGroup:
            if counts is None or counts[group] > 0:
                self.trainers[group].add(hospital_of(reply))
        delta = reply.content[keys.CONTROL_VARIATES]
        self.control_total = {key: total + delta[key].numpy() for key, total in self.control_total.items()}


def scaffold_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """K corrected SGD steps from the global heads; keeps c_i⁺ (private) and sends y and Δc_i."""
    server_control = step.server_arrays[keys.CONTROL_VARIATES]  # c
    own_control = personal if personal is not None else {key: torch.zeros_like(v) for key, v in received.items()}
    correction = {key: (server_control[key] - own_control[key]).to(step.device) for key in received}  # c - c_i
    touched: set[str] = set()

    def correct(heads) -> None:  # g_i(y) - c_i + c, on the parameters this step trains
        for name, parameter in heads.named_parameters():
            if parameter.grad is not None:
                parameter.grad.add_(correction[name])
                touched.add(name)

    step.heads.load_state_dict(received)
    result = step.train(step.heads, correction=correct,
                        optimizer=lambda parameters: torch.optim.SGD(parameters, lr=step.options.local_lr))
    trained = snapshot(step.heads)
    scale = 1.0 / (result.steps * step.options.local_lr) if result.steps else 0.0  # 1 / (K η_l)
    new_control = {key: own_control[key] - server_control[key] + scale * (received[key] - trained[key])
                   if key in touched else own_control[key].clone() for key in received}
    delta = {key: new_control[key] - own_control[key] for key in received}
    return LocalUpdate(trained, new_control, result, extra={keys.CONTROL_VARIATES: delta})


def check(cfg, options: ScaffoldOptions) -> None:
    if options.local_lr <= 0:
        raise ConfigError(f"strategy.local_lr={options.local_lr} must be positive")


SPEC = register(StrategySpec(
    name="scaffold",
    description="SCAFFOLD (Karimireddy et al., 2020): local SGD corrected by server and hospital control variates",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster, strategy_class=Scaffold),
    local_update=scaffold_update,
    averages_weights=True,
    robust_aggregation=True,
    keeps_private_state=True,
    extra_arrays=(keys.CONTROL_VARIATES,),
    options=ScaffoldOptions,
    check=check,
))
