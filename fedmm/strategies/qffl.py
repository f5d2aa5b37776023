"""q-FFL (q-FedAvg): fair federated learning, which gives the hospitals with a higher loss more weight.

Li, Sanjabi, Beirami and Smith, 2020, "Fair Resource Allocation in Federated Learning" (ICLR),
Algorithm 2 (q-FedAvg). Hospital k trains from the global heads x as in FedAvg and reports F_k, its loss
of x before training (`loss-at-global`). With L = 1 / `client_learning_rate` (the paper's Lipschitz
estimate) and Δw_k = L (x - y_k):

    Δ_k = F_k^q Δw_k,   h_k = q F_k^{q-1} ||Δw_k||² + L F_k^q,   x ← x - Σ_k Δ_k / Σ_k h_k.

q = 0 is FedAvg with uniform weights; a larger q favours the worst-off hospitals (compare the summary's
`hospital_worst` to FedAvg's). Δ_k and h_k are Flower's `QFedAvg` math (`compute_delta_and_h`, imported).
In the modality-aware form each head group sums Δ_k and h_k over the hospitals that trained it, so an
image-only hospital's untouched report head adds no zero update to the report head's denominator.
A hospital that took no step, or has no paired loss to report, sends back x and is left out.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp.strategy.qfedavg import compute_delta_and_h

from fedmm import protocol as keys
from fedmm.aggregation.modality import MODALITY, SIZE, State
from fedmm.config import ConfigError
from fedmm.models.heads import HeadGroup, head_group
from fedmm.models.losses import symmetric_info_nce
from fedmm.strategies.base import DecodedOnRead, HospitalFedAvg
from fedmm.strategies.fedavg import build_averaging
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, global_update


@dataclass(frozen=True)
class QFFLOptions:
    q: float  # fairness: 0 is FedAvg (uniform); larger moves the model toward the hospitals with high loss
    client_learning_rate: float  # 1/L, the paper's Lipschitz estimate of the local objective


class QFairAverage:
    """q-FedAvg's step, one hospital at a time (the `Average` protocol, plus the hospital's loss)."""

    def __init__(self, current: State, mode: str, options: QFFLOptions) -> None:
        self.current, self.mode, self.options = current, mode, options
        self.keys = list(current)
        self.global_weights = [np.asarray(current[key]) for key in self.keys]
        self.deltas = {key: np.zeros(value.shape, dtype=np.float64) for key, value in current.items()}  # Σ Δ_k
        self.h = {key: 0.0 for key in current}  # Σ h_k
        self.added = 0

    def add(self, state: State, weight: float = 0.0, counts: dict[HeadGroup, float] | None = None,
            loss: float = math.nan) -> None:
        self.added += 1
        if math.isnan(loss):
            return
        local = [np.array(state[key], dtype=np.float64) for key in self.keys]  # Flower's math works in place
        delta, h = compute_delta_and_h([w.astype(np.float64) for w in self.global_weights], local, self.options.q,
                                       1.0 / self.options.client_learning_rate, loss)
        for key, value in zip(self.keys, delta):
            if self.mode == SIZE or (counts or {}).get(head_group(key), 0.0) > 0:
                self.deltas[key] += value
                self.h[key] += h

    def trained(self) -> set[HeadGroup]:
        return {head_group(key) for key, total in self.h.items() if total > 0}

    def result(self) -> dict[str, np.ndarray]:
        if not self.added:
            raise ValueError("an average needs at least one hospital")
        return {key: np.asarray(x - self.deltas[key] / self.h[key], dtype=x.dtype) if self.h[key] > 0
                else np.array(x, copy=True) for key, x in self.current.items()}


class QFedAvg(HospitalFedAvg):
    def __init__(self, *args, options: QFFLOptions, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.options = options

    def new_average(self) -> QFairAverage:
        assert self.current_arrays is not None, "configure_train stores the global model first"
        current = {key: array.numpy() for key, array in self.current_arrays.items()}
        return QFairAverage(current, MODALITY if self.modality_aware else SIZE, self.options)

    def fold(self, average: QFairAverage, reply: Message) -> None:
        metrics = reply.content[keys.METRICS]
        loss = float(metrics.get(keys.LOSS_AT_GLOBAL, math.nan)) if metrics[keys.TRAIN_STEPS] > 0 else math.nan
        average.add(DecodedOnRead(reply.content[keys.ARRAYS]), *self.reply_weights(reply), loss=loss)


@torch.no_grad()
def loss_at(step: LocalStep, state: StateDict) -> float:
    """The hospital's in-batch InfoNCE of the heads `state` on its pairs, in fixed batches; nan without pairs."""
    step.heads.load_state_dict(state)
    step.heads.eval()
    data = step.data
    pairs = data.paired_mask.nonzero().flatten()
    losses, sizes = [], []
    for start in range(0, len(pairs), step.cfg.train.batch_size):
        batch = pairs[start:start + step.cfg.train.batch_size]
        if len(batch) < 2:
            continue
        images = step.heads.embed_images(data.image_features[batch].to(step.device))
        reports = step.heads.embed_reports(data.report_features[batch].to(step.device))
        losses.append(symmetric_info_nce(images, reports, step.heads.scale()).total.item())
        sizes.append(len(batch))
    return float(np.average(losses, weights=sizes)) if losses else math.nan


def qffl_update(step: LocalStep, received: StateDict, personal: StateDict | None) -> LocalUpdate:
    """FedAvg's local step, reporting first the loss F_k of the received heads."""
    loss = loss_at(step, received)
    update = global_update(step, received)
    if not math.isnan(loss):
        update.metrics[keys.LOSS_AT_GLOBAL] = loss
    return update


def check(cfg, options: QFFLOptions) -> None:
    if options.q < 0:
        raise ConfigError(f"strategy.q={options.q} must be >= 0 (0 is FedAvg)")
    if options.client_learning_rate <= 0:
        raise ConfigError(f"strategy.client_learning_rate={options.client_learning_rate} must be positive")


SPEC = register(StrategySpec(
    name="qffl",
    description="q-FFL (Li et al., 2020): q-FedAvg, hospitals weighted up by their loss for fairness",
    build_server=lambda cfg, options, data, roster: build_averaging(cfg, roster, strategy_class=QFedAvg,
                                                                    options=options),
    local_update=qffl_update,
    averages_weights=True,
    resumable=True,
    options=QFFLOptions,
    check=check,
))
