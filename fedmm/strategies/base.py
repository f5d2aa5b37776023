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

from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log

from fedmm import protocol as keys
from fedmm.aggregation.modality import MODALITY, SIZE, UNIFORM, Average, RunningAverage
from fedmm.aggregation.robust import RobustAverage
from fedmm.aggregation.server_optimizers import ServerOptimizer
from fedmm.config import AggregatorConfig
from fedmm.models.heads import HeadGroup
from fedmm.protocol import without_update
from fedmm.runs.checkpoint import Checkpoint
from fedmm.strategies.roster import Roster, hospital_of, record_bytes

MEAN = AggregatorConfig()  # the plain (or modality-aware) mean

GROUP_COUNT_KEYS = {  # the reply metric that weights each head group in the modality-aware average
    HeadGroup.IMAGE: keys.NUM_IMAGE_USED,
    HeadGroup.REPORT: keys.NUM_REPORT_USED,
    HeadGroup.TEMPERATURE: keys.NUM_PAIRED_USED,
}


class HospitalFedAvg(FedAvg):
    """FedAvg over the hospitals of a `Roster`; optionally modality-aware, uniformly weighted (client-level
    DP) and followed by a server optimizer."""

    has_global_model = True  # False when hospitals keep part of the model (FedPer, FedRep)
    can_fold_on_arrival = True  # False where aggregate_train is not this averaging (distillation)
    train_message_type = MessageType.TRAIN  # distillation: `train.distill`

    def __init__(self, roster: Roster, modality_aware: bool = False, server_optimizer: ServerOptimizer | None = None,
                 uniform_weights: bool = False, aggregator: AggregatorConfig = MEAN) -> None:
        super().__init__(min_available_nodes=roster.num_hospitals, weighted_by_key=keys.NUM_EXAMPLES,
                         train_metrics_aggr_fn=aggregate_train_metrics)
        self.roster = roster
        self.modality_aware, self.server_optimizer = modality_aware, server_optimizer
        self.uniform_weights = uniform_weights  # client-level DP: every update counts 1/m, m = clients_per_round
        self.aggregator = aggregator  # the mean, or a robust rule (median, trimmed mean, Krum) in its place
        self.current_arrays: ArrayRecord | None = None  # the global model at the start of this round
        self.sent_arrays: ArrayRecord | None = None  # what the hospitals received for training this round
        self.folds_on_arrival = False  # run_federated sets it where replies reach `on_reply` (a FoldingGrid)
        self.arrivals: InOrderFold | None = None  # this round's replies folded so far

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
                  server_round: int, message_type: str, extra: dict[str, ArrayRecord] | None = None) -> list[Message]:
        config[keys.SERVER_ROUND] = server_round
        record = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config} | (extra or {}))
        return [Message(content=record, message_type=message_type, dst_node_id=self.roster.node_of_hospital[h])
                for h in hospitals]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        sampled = self.roster.start_round(server_round)
        self.current_arrays = arrays
        self.sent_arrays = self.train_payload(server_round, arrays)
        if self.folds_on_arrival:
            average = self.new_average()
            self.arrivals = InOrderFold(sampled, average, lambda reply: self.fold(average, reply))
        log(INFO, "configure_train: hospitals %s", sampled)
        return self._messages(sampled, self.sent_arrays, config, server_round, self.train_message_type,
                              self.train_extras())

    def train_extras(self) -> dict[str, ArrayRecord]:
        """Further named arrays sent with the training arrays (SCAFFOLD: the server's control variate)."""
        return {}

    def train_payload(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """What the sampled hospitals receive for training: the global arrays (distillation: embeddings)."""
        return arrays

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = self.roster.answered(server_round, replies, "training")
        arrivals, self.arrivals = self.arrivals, None
        if arrivals is not None:
            arrivals.finish()
        self.roster.log_train(server_round, ordered, self.download_bytes,
                              upload_bytes=arrivals.upload_bytes if arrivals is not None else None)
        contributing = [reply for reply in ordered if not no_update(reply)]
        self.roster.retire_exhausted(server_round, ordered)
        if not contributing:  # nobody trained: the global model stays as it is
            return None, None
        arrays = self.finish_average(arrivals.average) if arrivals is not None else self.aggregate_arrays(contributing)
        return arrays, self.train_metrics_aggr_fn([reply.content for reply in contributing], self.weighted_by_key)

    @property
    def download_bytes(self) -> int:
        """Bytes of arrays sent to each sampled hospital this round."""
        return record_bytes(RecordDict({keys.ARRAYS: self.sent_arrays})) if self.sent_arrays is not None else 0

    def new_average(self) -> Average:
        """This round's average, empty: modality-aware or size-weighted, robust (`aggregator`), or (client-level
        DP) uniform."""
        assert self.current_arrays is not None, "configure_train stores the global model first"
        current = {key: array.numpy() for key, array in self.current_arrays.items()}
        if self.uniform_weights:  # client-level DP: one hospital moves the average by at most C/m, whoever replies
            return RunningAverage(current, UNIFORM, planned=self.roster.clients_per_round)
        mode = MODALITY if self.modality_aware else SIZE
        if self.aggregator.name != "mean":
            return RobustAverage(current, mode, self.aggregator)
        return RunningAverage(current, mode)

    def fold(self, average: Average, reply: Message) -> None:
        """Add one hospital's reply to `average`; its arrays are decoded one at a time, as the sum reaches them."""
        average.add(DecodedOnRead(reply.content[keys.ARRAYS]), *self.reply_weights(reply))

    def reply_weights(self, reply: Message) -> tuple[float, dict[HeadGroup, float] | None]:
        """(its weight in the size-weighted average, its samples per head group in the modality-aware one)."""
        metrics = reply.content[keys.METRICS]
        counts = ({group: float(metrics[key]) for group, key in GROUP_COUNT_KEYS.items()}
                  if self.modality_aware else None)
        return float(metrics[self.weighted_by_key]), counts

    def finish_average(self, average: Average) -> ArrayRecord:
        """The next global arrays: the average, then the server optimizer's step (FedAvgM, FedAdam, FedYogi)."""
        averaged = average.result()
        if self.server_optimizer is not None:
            averaged = self.server_optimizer.step(average.current, averaged, average.trained())
        return ArrayRecord({key: Array(value) for key, value in averaged.items()})

    def aggregate_arrays(self, ordered: list[Message]) -> ArrayRecord:
        """The next global arrays from replies already sorted by hospital id."""
        average = self.new_average()
        for reply in ordered:
            self.fold(average, reply)
        return self.finish_average(average)

    def on_reply(self, reply: Message) -> Message:
        """`FoldingGrid`'s hook: a reply as it arrives. With `folds_on_arrival`, a training reply is added to
        the round's average in hospital order and its arrays are dropped, so a round of a thousand
        hospitals holds a few replies' arrays, not a thousand."""
        if self.arrivals is not None and reply.metadata.message_type == self.train_message_type:
            self.arrivals.offer(reply)
        return reply

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


def no_update(reply: Message) -> bool:
    """The hospital sent no update: its next round would have passed its sample-level privacy budget, or
    it missed the round's deadline."""
    return without_update(reply.content[keys.METRICS])


class InOrderFold:
    """A round's training replies added to its average as they arrive, in hospital-id order (so the sum is
    the same whatever the arrival order): a reply waits only for the sampled hospitals before it. Once
    added, a reply's arrays are dropped; its size is kept for the round's log. A hospital that never
    answers holds the ones after it until `finish`, which adds what arrived."""

    def __init__(self, sampled: list[int], average: Average, fold: Callable[[Message], None]) -> None:
        self.pending, self.average, self.fold = sorted(sampled), average, fold
        self.waiting: dict[int, Message] = {}
        self.upload_bytes: dict[int, int] = {}

    def offer(self, reply: Message) -> None:
        if reply.has_error():  # failures are the roster's (known by absence)
            return
        self.waiting[hospital_of(reply)] = reply
        while self.pending and self.pending[0] in self.waiting:
            self.add(self.waiting.pop(self.pending.pop(0)))

    def finish(self) -> None:
        for hospital in self.pending:
            if hospital in self.waiting:
                self.add(self.waiting.pop(hospital))
        self.pending = []

    def add(self, reply: Message) -> None:
        self.upload_bytes[hospital_of(reply)] = record_bytes(reply.content)
        if not no_update(reply):
            self.fold(reply)
        for name in list(reply.content.array_records):
            reply.content[name] = ArrayRecord()


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
