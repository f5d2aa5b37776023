"""FedAvg over hospitals, with reproducible sampling and per-hospital bookkeeping.

McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS). Each head is averaged over the sampled hospitals, weighted by their training-set size
(`num-examples`), whatever modalities those samples hold: an image-only hospital sends back report
heads it did not train and they count as much as anyone's.

Modality-aware form (`strategy.modality_aware=true`): each head group is averaged
only over the hospitals that trained it, weighted by the samples that carried gradient into it (image
samples for the image head, report samples for the report head, pairs for the temperature); a group
no sampled hospital trained keeps its global value. A `ServerOptimizer` then turns the average into
the next global model (FedAvg: take it; FedAvgM, FedAdam, FedYogi: a pseudo-gradient step).

Flower's node ids are random in every run, so sampling draws hospital ids from the run's seed and maps
them to nodes, and replies are sorted by hospital id before aggregation.

Failures: a hospital whose node does not reply (an error reply such as Flower's "Node Unavailable" for a
node that stopped sending heartbeats, or no reply within `federation.round_timeout_s`) is lost: it gets
no more messages. The run goes on while at least `min_hospitals` remain; below that it stops (a training
failure ends the run before that round is recorded, an evaluation failure after it), keeping every
finished round.

Privacy budgets: a hospital that reports `privacy-exhausted` (it did not train: one more round would pass
its sample-level budget) is left out of the average and retired: it is not sent training messages any
more (`privacy.on_budget: stop_hospital`), or the run stops after that round (`stop_run`).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
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

SAMPLING_STREAM = 2
GROUP_COUNT_KEYS = {  # the reply metric that weights each head group in the modality-aware average
    HeadGroup.IMAGE: keys.NUM_IMAGE_USED,
    HeadGroup.REPORT: keys.NUM_REPORT_USED,
    HeadGroup.TEMPERATURE: keys.NUM_PAIRED_USED,
}


class RunStopped(Exception):
    """Ends the round loop early and cleanly (a privacy budget); the rounds already recorded are kept."""


class HospitalsLost(RunStopped):
    """Ends the round loop because fewer than `min_hospitals` hospitals remain; the run has failed, but the
    rounds already recorded are kept."""


@dataclass
class RoundLog:
    """What the hospitals said in one round, keyed by hospital id."""

    sampled: list[int] = field(default_factory=list)
    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)


def sample_hospitals(num_hospitals: int, sample_size: int, seed: int, server_round: int) -> list[int]:
    """Sorted hospital ids for a round; depends only on (seed, round), never on node ids."""
    rng = np.random.default_rng([seed, SAMPLING_STREAM, server_round])
    return sorted(int(h) for h in rng.choice(num_hospitals, size=sample_size, replace=False))


def sample_size(num_hospitals: int, clients_per_round: int | None, fraction: float) -> int:
    if clients_per_round is not None:
        return clients_per_round
    return max(1, int(round(num_hospitals * fraction)))


class HospitalFedAvg(FedAvg):
    """FedAvg whose sampling, ordering and logs are by hospital id; optionally modality-aware and
    followed by a server optimizer."""

    has_global_model = True  # False when hospitals keep part of the model (FedPer, FedRep)
    train_message_type = MessageType.TRAIN  # distillation: `train.distill`

    def __init__(self, node_of_hospital: Mapping[int, int], clients_per_round: int, seed: int,
                 evaluate_every: int, num_rounds: int, modality_aware: bool = False,
                 server_optimizer: ServerOptimizer | None = None, uniform_weights: bool = False,
                 stop_run_at_budget: bool = False, min_hospitals: int | None = None,
                 round_timeout_s: float = 600.0) -> None:
        super().__init__(min_available_nodes=len(node_of_hospital), weighted_by_key=keys.NUM_EXAMPLES,
                         train_metrics_aggr_fn=aggregate_train_metrics)
        self.node_of_hospital = dict(node_of_hospital)
        self.clients_per_round, self.seed = clients_per_round, seed
        self.evaluate_every, self.num_rounds = evaluate_every, num_rounds
        self.modality_aware, self.server_optimizer = modality_aware, server_optimizer
        self.uniform_weights = uniform_weights  # client-level DP: every update counts 1/m, m = clients_per_round
        self.stop_run_at_budget = stop_run_at_budget
        self.retired: dict[int, str] = {}  # hospital -> why it trains no more
        self.min_hospitals = min_hospitals if min_hospitals is not None else len(node_of_hospital)
        self.lost: dict[int, str] = {}  # hospital -> how its node failed; it gets no more messages
        self.stop: RunStopped | None = None  # set in a round's aggregation; the next round raises it
        self.stop_round: int | None = None
        self.logs: dict[int, RoundLog] = {}
        self.evaluated: list[int] = []  # the hospitals sent this round's evaluation
        self.round_timeout_s = round_timeout_s
        self.current_arrays: ArrayRecord | None = None  # the global model at the start of this round
        self.sent_arrays: ArrayRecord | None = None  # what the hospitals received for training this round

    def initial_arrays(self, heads_state: Mapping) -> ArrayRecord:
        """What the server holds and sends: the whole heads here; the shared part in FedPer/FedRep."""
        return ArrayRecord(dict(heads_state))

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> Checkpoint:
        """The server's state after `server_round`, with `arrays` the global model."""
        moments, steps = self.server_optimizer.state() if self.server_optimizer is not None else ({}, {})
        return Checkpoint(server_round, {key: array.numpy() for key, array in arrays.items()}, moments, steps,
                          dict(self.retired))

    def restore(self, checkpoint: Checkpoint) -> None:
        if self.server_optimizer is not None:
            self.server_optimizer.load_state(checkpoint.optimizer_moments, checkpoint.optimizer_steps)
        self.retired = dict(checkpoint.retired)

    def is_evaluation_round(self, server_round: int) -> bool:
        return (server_round % self.evaluate_every == 0 or server_round in (self.num_rounds, self.stop_round))

    def draw(self, server_round: int) -> list[int]:
        """This round's hospitals: the seeded sample, less the retired ones."""
        sample = sample_hospitals(len(self.node_of_hospital), self.clients_per_round, self.seed, server_round)
        return [hospital for hospital in sample if hospital not in self.retired and hospital not in self.lost]

    def retire(self, hospital: int, reason: str) -> None:
        self.retired.setdefault(hospital, reason)

    def contributors(self, server_round: int) -> list[int]:
        """Hospitals whose update entered this round's average."""
        return [h for h, metrics in self.logs[server_round].train.items() if not metrics.get(keys.PRIVACY_EXHAUSTED)]

    def _messages(self, hospitals: list[int], arrays: ArrayRecord, config: ConfigRecord,
                  server_round: int, message_type: str) -> list[Message]:
        config[keys.SERVER_ROUND] = server_round
        record = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        return [Message(content=record, message_type=message_type, dst_node_id=self.node_of_hospital[h])
                for h in hospitals]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.stop is not None:
            raise self.stop
        sampled = self.draw(server_round)
        self.logs[server_round] = RoundLog(sampled=sampled)
        self.current_arrays = arrays
        self.sent_arrays = self.train_payload(server_round, arrays)
        log(INFO, "configure_train: hospitals %s", sampled)
        return self._messages(sampled, self.sent_arrays, config, server_round, self.train_message_type)

    def train_payload(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """What the sampled hospitals receive for training: the global arrays (distillation: embeddings)."""
        return arrays

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = self.answered(server_round, replies, "training", self.logs[server_round].sampled)
        self.log_train(server_round, ordered)
        contributing = [reply for reply in ordered if not reply.content[keys.METRICS].get(keys.PRIVACY_EXHAUSTED)]
        self.retire_exhausted(server_round, ordered)
        if not contributing:  # nobody trained: the global model stays as it is
            return None, None
        return self.aggregate_arrays(contributing), self.train_metrics_aggr_fn(
            [reply.content for reply in contributing], self.weighted_by_key)

    def retire_exhausted(self, server_round: int, ordered: list[Message]) -> None:
        exhausted = [hospital_of(r) for r in ordered if r.content[keys.METRICS].get(keys.PRIVACY_EXHAUSTED)]
        if not exhausted:
            return
        reason = f"hospital(s) {exhausted} reached their sample-level privacy budget (privacy.sample.max_epsilon)"
        if self.stop_run_at_budget:
            self.stop, self.stop_round = RunStopped(f"round {server_round}: {reason}"), server_round
            log(WARNING, "%s; the run stops after this round", reason)
            return
        log(WARNING, "%s; they train no more", reason)
        for hospital in exhausted:
            self.retire(hospital, "sample-level privacy budget")

    def log_train(self, server_round: int, ordered: list[Message],
                  extra: Mapping[int, Mapping[str, float]] | None = None) -> None:
        """Keep each hospital's training metrics, the bytes it sent and received, and any `extra` per hospital."""
        download = self.download_bytes
        self.logs[server_round].train = {
            hospital_of(reply): dict(reply.content[keys.METRICS]) | dict((extra or {}).get(hospital_of(reply), {}))
            | {keys.UPLOAD_BYTES: record_bytes(reply.content), keys.DOWNLOAD_BYTES: download}
            for reply in ordered
        }

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
        states = [{key: array.numpy() for key, array in reply.content[keys.ARRAYS].items()} for reply in ordered]
        if self.uniform_weights:  # client-level DP: one hospital moves the average by at most C/m, whoever replies
            averaged = {key: np.asarray(value + sum(state[key] - value for state in states) / self.clients_per_round,
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
        # The hospitals asked this round: none outside evaluation rounds (Flower still calls aggregate_evaluate).
        self.evaluated = self.reachable() if self.is_evaluation_round(server_round) else []
        return self._messages(self.evaluated, arrays, config, server_round, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        # Hospitals report different metrics (an image-only one has no retrieval), so no Flower averaging here:
        # the per-hospital values are kept and summarized per modality group by the run recorder.
        ordered = self.answered(server_round, replies, "evaluation", self.evaluated, stop_now=False)
        self.logs[server_round].evaluate = {hospital_of(reply): dict(reply.content[keys.METRICS]) for reply in ordered}
        return None

    def reachable(self) -> list[int]:
        """Hospitals whose nodes have not failed."""
        return [hospital for hospital in sorted(self.node_of_hospital) if hospital not in self.lost]

    def answered(self, server_round: int, replies: Iterable[Message], stage: str, expected: list[int],
                 stop_now: bool = True) -> list[Message]:
        """The successful replies, sorted by hospital id. Hospitals in `expected` without one are lost; when
        fewer than `min_hospitals` remain the run stops: now (`stop_now`, this round is not recorded) or
        at the next round."""
        replies = list(replies)
        ordered = sorted((reply for reply in replies if not reply.has_error()), key=hospital_of)
        failed = sorted(set(expected) - {hospital_of(reply) for reply in ordered})
        if not failed:
            return ordered
        # An error reply may come from the SuperLink on the node's behalf, so failures are known by absence.
        reasons = sorted({reply.error.reason for reply in replies if reply.has_error()})
        why = "; ".join(reasons) or f"no reply within federation.round_timeout_s={self.round_timeout_s:g}"
        for hospital in failed:
            self.lost[hospital] = f"round {server_round} {stage}: {why}"
        remaining = len(self.reachable())
        what = (f"round {server_round}, {stage}: hospital(s) {failed} failed ({why}); {remaining} of "
                f"{len(self.node_of_hospital)} remain")
        if remaining >= self.min_hospitals:
            log(WARNING, "%s; the run goes on without them (federation.min_hospitals=%d)", what, self.min_hospitals)
            return ordered
        stop = HospitalsLost(f"{what}, fewer than federation.min_hospitals={self.min_hospitals}. The finished rounds "
                             "are kept in metrics.jsonl; restart the failed nodes and run again (resume=true continues "
                             "from the last checkpoint where the strategy allows), or lower federation.min_hospitals")
        if stop_now:
            raise stop
        self.stop, self.stop_round = stop, server_round
        return ordered


class FederatedStrategy(Protocol):
    """What `run_federated` needs of a strategy's server side (`StrategySpec.build_server`): Flower's round
    loop (`start`), the per-round logs it records, and the state it checkpoints. `HospitalFedAvg` and the
    wrappers around it provide it."""

    has_global_model: bool  # False: the server holds only a shared part, so there is no global evaluation
    logs: dict[int, RoundLog]  # per round: sampled hospitals, their training and evaluation metrics
    retired: dict[int, str]  # hospital -> why it trains no more (a privacy budget)
    lost: dict[int, str]  # hospital -> how its node failed

    def initial_arrays(self, heads_state: Mapping) -> ArrayRecord: ...

    def is_evaluation_round(self, server_round: int) -> bool: ...

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


def hospital_of(reply: Message) -> int:
    return int(reply.content[keys.METRICS][keys.HOSPITAL_ID])


def record_bytes(record: RecordDict) -> int:
    """Payload bytes of the arrays in a message (metrics and config are a few hundred bytes more)."""
    return sum(len(array.data) for item in record.array_records.values() for array in item.values())


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
