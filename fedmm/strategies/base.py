"""FedAvg over hospitals: the averaging every weight-averaging strategy builds on.

McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS). Each head is averaged over the sampled hospitals, weighted by their training-set size
(`num-examples`), whatever modalities those samples hold: an image-only hospital sends back report
heads it did not train and they count as much as anyone's.

Modality-aware form (`strategy.modality_aware=true`): each head group is averaged
only over the hospitals that trained it, weighted by the samples that carried gradient into it (image
samples for the image head, report samples for the report head, pairs for the temperature); a group
no sampled hospital trained keeps its global value. A `ServerOptimizer` then turns the average into
the next global model (FedAvg: take it; FedAvgM, FedAdam, FedYogi: a pseudo-gradient step).

Who is sampled, who answered, who failed or ran out of budget, and what each hospital said is the
`Roster`'s (`roster.py`); this file holds only the algorithm.
"""

from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from fedmm import protocol as keys
from fedmm.aggregation.modality import modality_weighted_average
from fedmm.aggregation.server_optimizers import ServerOptimizer
from fedmm.models.heads import HeadGroup
from fedmm.runs.checkpoint import Checkpoint
from fedmm.strategies.roster import Roster, record_bytes

GROUP_COUNT_KEYS = {  # the reply metric that weights each head group in the modality-aware average
    HeadGroup.IMAGE: keys.NUM_IMAGE_USED,
    HeadGroup.REPORT: keys.NUM_REPORT_USED,
    HeadGroup.TEMPERATURE: keys.NUM_PAIRED_USED,
}


class HospitalFedAvg(FedAvg):
    """FedAvg over the hospitals of a `Roster`; optionally modality-aware, uniformly weighted (client-level
    DP) and followed by a server optimizer."""

    has_global_model = True  # False when hospitals keep part of the model (FedPer, FedRep)
    train_message_type = MessageType.TRAIN  # distillation: `train.distill`

    def __init__(self, roster: Roster, modality_aware: bool = False, server_optimizer: ServerOptimizer | None = None,
                 uniform_weights: bool = False) -> None:
        super().__init__(min_available_nodes=roster.num_hospitals, weighted_by_key=keys.NUM_EXAMPLES,
                         train_metrics_aggr_fn=aggregate_train_metrics)
        self.roster = roster
        self.modality_aware, self.server_optimizer = modality_aware, server_optimizer
        self.uniform_weights = uniform_weights  # client-level DP: every update counts 1/m, m = clients_per_round
        self.current_arrays: ArrayRecord | None = None  # the global model at the start of this round
        self.sent_arrays: ArrayRecord | None = None  # what the hospitals received for training this round

    def initial_arrays(self, heads_state: Mapping) -> ArrayRecord:
        """What the server holds and sends: the whole heads here; the shared part in FedPer/FedRep."""
        return ArrayRecord(dict(heads_state))

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> Checkpoint:
        """The server's state after `server_round`, with `arrays` the global model."""
        moments, steps = self.server_optimizer.state() if self.server_optimizer is not None else ({}, {})
        return Checkpoint(server_round, {key: array.numpy() for key, array in arrays.items()}, moments, steps,
                          dict(self.roster.retired))

    def restore(self, checkpoint: Checkpoint) -> None:
        if self.server_optimizer is not None:
            self.server_optimizer.load_state(checkpoint.optimizer_moments, checkpoint.optimizer_steps)
        self.roster.retired = dict(checkpoint.retired)

    def _messages(self, hospitals: list[int], arrays: ArrayRecord, config: ConfigRecord,
                  server_round: int, message_type: str) -> list[Message]:
        config[keys.SERVER_ROUND] = server_round
        record = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        return [Message(content=record, message_type=message_type, dst_node_id=self.roster.node_of_hospital[h])
                for h in hospitals]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        sampled = self.roster.start_round(server_round)
        self.current_arrays = arrays
        self.sent_arrays = self.train_payload(server_round, arrays)
        log(INFO, "configure_train: hospitals %s", sampled)
        return self._messages(sampled, self.sent_arrays, config, server_round, self.train_message_type)

    def train_payload(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """What the sampled hospitals receive for training: the global arrays (distillation: embeddings)."""
        return arrays

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = self.roster.answered(server_round, replies, "training")
        self.roster.log_train(server_round, ordered, self.download_bytes)
        contributing = [reply for reply in ordered if not reply.content[keys.METRICS].get(keys.PRIVACY_EXHAUSTED)]
        self.roster.retire_exhausted(server_round, ordered)
        if not contributing:  # nobody trained: the global model stays as it is
            return None, None
        return self.aggregate_arrays(contributing), self.train_metrics_aggr_fn(
            [reply.content for reply in contributing], self.weighted_by_key)

    @property
    def download_bytes(self) -> int:
        """Bytes of arrays sent to each sampled hospital this round."""
        return record_bytes(RecordDict({keys.ARRAYS: self.sent_arrays})) if self.sent_arrays is not None else 0

    def aggregate_arrays(self, ordered: list[Message]) -> ArrayRecord:
        """The next global arrays from replies already sorted by hospital id."""
        assert self.current_arrays is not None, "configure_train stores the global model first"
        if not self.modality_aware and self.server_optimizer is None and not self.uniform_weights:
            return aggregate_arrayrecords([reply.content for reply in ordered], self.weighted_by_key)  # Flower's
        current = {key: array.numpy() for key, array in self.current_arrays.items()}
        # Each hospital's arrays are decoded one at a time, when the average reaches them: a round of a
        # thousand replies is not held twice (as Flower's bytes and as decoded arrays).
        states = [DecodedOnRead(reply.content[keys.ARRAYS]) for reply in ordered]
        if self.uniform_weights:  # client-level DP: one hospital moves the average by at most C/m, whoever replies
            planned = self.roster.clients_per_round
            averaged = {key: np.asarray(value + sum(state[key] - value for state in states) / planned,
                                        dtype=value.dtype) for key, value in current.items()}
            trained = set(HeadGroup)
        elif self.modality_aware:
            counts = [{group: float(reply.content[keys.METRICS][key]) for group, key in GROUP_COUNT_KEYS.items()}
                      for reply in ordered]
            averaged = modality_weighted_average(current, states, counts)
            trained = {group for group in HeadGroup if any(count[group] > 0 for count in counts)}
        else:
            averaged = {key: array.numpy() for key, array in aggregate_arrayrecords(
                [reply.content for reply in ordered], self.weighted_by_key).items()}
            trained = set(HeadGroup)
        if self.server_optimizer is not None:
            averaged = self.server_optimizer.step(current, averaged, trained)
        return ArrayRecord({key: Array(value) for key, value in averaged.items()})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        # Outside evaluation rounds nobody is asked (Flower still calls aggregate_evaluate).
        return self._messages(self.roster.start_evaluation(server_round), arrays, config, server_round,
                              MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        # Hospitals report different metrics (an image-only one has no retrieval), so no Flower averaging here:
        # the per-hospital values are kept and summarized per modality group by the run recorder.
        ordered = self.roster.answered(server_round, replies, "evaluation", self.roster.evaluated, stop_now=False)
        self.roster.log_evaluation(server_round, ordered)
        return None


class DecodedOnRead(Mapping):
    """A reply's ArrayRecord read as {name: numpy array}, each array decoded when it is looked up."""

    def __init__(self, record: ArrayRecord) -> None:
        self.record = record

    def __getitem__(self, key: str) -> np.ndarray:
        return self.record[key].numpy()

    def __iter__(self):
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)


class FederatedStrategy(Protocol):
    """What `run_federated` needs of a strategy's server side (`StrategySpec.build_server`): Flower's round
    loop (`start`), the roster whose logs it records, and the state it checkpoints. `HospitalFedAvg` and the
    wrappers around it provide it."""

    has_global_model: bool  # False: the server holds only a shared part, so there is no global evaluation
    roster: Roster  # per round: sampled hospitals and what they said; who is lost or retired

    def initial_arrays(self, heads_state: Mapping) -> ArrayRecord: ...

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> Checkpoint: ...

    def restore(self, checkpoint: Checkpoint) -> None: ...

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int, timeout: float,
              train_config: ConfigRecord, evaluate_fn) -> object: ...


class Delegating(Strategy):
    """A Flower strategy that hands every round hook to `inner` (at round `round_of(server_round)`);
    a wrapper overrides only the hooks it changes."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__()
        self.inner = inner

    def round_of(self, server_round: int) -> int:
        return server_round

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(self.round_of(server_round), arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(self.round_of(server_round), replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(self.round_of(server_round), arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(self.round_of(server_round), replies)

    def summary(self) -> None:
        self.inner.summary()


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Loss averaged over hospitals that trained (weighted by pairs used); sample counts summed."""
    metrics = [record[keys.METRICS] for record in records]
    # Under DP-SGD hospitals publish no loss (a statistic of private data).
    trained = [(m[keys.TRAIN_LOSS], m[keys.NUM_PAIRED_USED]) for m in metrics
               if m[keys.TRAIN_STEPS] > 0 and keys.TRAIN_LOSS in m]
    total_pairs = sum(weight for _, weight in trained)
    summary = {key: float(sum(m[key] for m in metrics))
               for key in (keys.NUM_PAIRED_USED, keys.NUM_IMAGE_USED, keys.NUM_REPORT_USED, keys.NUM_EXAMPLES)}
    if total_pairs > 0:
        summary[keys.TRAIN_LOSS] = sum(loss * weight for loss, weight in trained) / total_pairs
    return MetricRecord(summary)
