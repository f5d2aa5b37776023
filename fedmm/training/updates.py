"""What a local update works with and returns (plain PyTorch): the pieces every strategy's update shares.

A strategy's local update (`StrategySpec.local_update`) takes a `LocalStep` and the arrays the server
sent, and returns a `LocalUpdate`: `shared` goes back to the server, `personal` stays in the hospital's
state (Flower's `context.state`) for the next round and never leaves it.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmm.config import ExperimentConfig
from fedmm.federation import SplitTensors
from fedmm.models.heads import ContrastiveHeads, is_personal_layer
from fedmm.simulation.conditions import Clock
from fedmm.training.local import GradientCorrection, OptimizerFactory, Regularizer, TrainResult, train_heads
from fedmm.training.missing import HandlerFactory
from fedmm.training.regularizers import proximal_term

StateDict = dict[str, torch.Tensor]


@dataclass
class LocalUpdate:
    shared: StateDict  # sent to the server
    personal: StateDict | None  # kept by the hospital; None: nothing private
    result: TrainResult  # of the training that produced `shared`
    extra: dict[str, StateDict] = field(default_factory=dict)  # further named arrays sent (SCAFFOLD's variates)
    metrics: dict[str, float] = field(default_factory=dict)  # further reply metrics (q-FFL's loss at the global)


@dataclass
class LocalStep:
    """One hospital's training (or evaluation) step: its reusable models, its data and this step's seed."""

    cfg: ExperimentConfig
    options: Any  # the strategy's typed options
    heads: ContrastiveHeads  # reused; an update loads the weights it trains into it
    personal_heads: ContrastiveHeads  # a second model for strategies that train two (Ditto)
    initial_state: StateDict  # the run's initial heads, where private parts start
    data: SplitTensors  # the hospital's training split
    seed: int
    device: torch.device
    missing: HandlerFactory | None  # the missing-modality handler (None: pairs only)
    round_config: Mapping[str, Any] = field(default_factory=dict)  # what the server sent with the arrays
    load_reference: Callable[[], SplitTensors] | None = None  # the public reference set, loaded on demand
    dpsgd: Any = None  # the hospital's DP-SGD settings (`fedmm.training.bank.DPSGD`); None: no sample-level DP
    server_arrays: Mapping[str, StateDict] = field(default_factory=dict)  # other named arrays the server sent
    clock: Clock | None = None  # this round's virtual training time (`conditions.compute`); None: no clock

    def train(self, heads: ContrastiveHeads, *, seed: int | None = None, epochs: int | None = None,
              parameters: list[str] | None = None, regularizer: Regularizer | None = None,
              correction: GradientCorrection | None = None, optimizer: OptimizerFactory | None = None) -> TrainResult:
        """`train_heads` on this hospital's data with this step's settings."""
        return train_heads(heads, self.data, self.cfg.train, self.seed if seed is None else seed, self.device,
                           epochs=epochs, parameters=parameters, regularizer=regularizer, missing=self.missing,
                           correction=correction, optimizer=optimizer, clock=self.clock)


def split_personal(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """(shared, personal) parts of a heads state dict, by FedPer's layer split."""
    shared = {k: v for k, v in state.items() if not is_personal_layer(k)}
    return shared, {k: v for k, v in state.items() if is_personal_layer(k)}


def snapshot(heads: ContrastiveHeads) -> StateDict:
    return {key: value.detach().cpu().clone() for key, value in heads.state_dict().items()}


def proximal_to(received: StateDict, weight: float, device: torch.device) -> Regularizer:
    """(weight/2)·||w - received||²: FedProx's term, and Ditto's pull of the private model."""
    anchor = {key: value.to(device) for key, value in received.items()}
    return lambda model, batch: proximal_term(model, anchor, weight)


def global_update(step: LocalStep, received: StateDict, proximal_mu: float = 0.0) -> LocalUpdate:
    """FedAvg's local step (FedProx's when `proximal_mu` > 0): train the received heads, send them all."""
    step.heads.load_state_dict(received)
    regularizer = proximal_to(received, proximal_mu, step.device) if proximal_mu > 0 else None
    result = step.train(step.heads, regularizer=regularizer)
    return LocalUpdate(snapshot(step.heads), None, result)
