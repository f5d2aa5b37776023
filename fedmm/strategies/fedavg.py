"""FedAvg over hospitals, with reproducible sampling and per-hospital bookkeeping.

McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS). Each head is averaged over the sampled hospitals, weighted by their training-set size
(`num-examples`), whatever modalities those samples hold: an image-only hospital sends back report
heads it did not train and they count as much as anyone's. `fedavg_modality` removes that dilution.

Flower's node ids are random in every run, so sampling draws hospital ids from the run's seed and maps
them to nodes, and replies are sorted by hospital id before aggregation.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from fedmm.strategies import messages as keys

SAMPLING_STREAM = 2


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
    """FedAvg whose sampling, ordering and logs are by hospital id."""

    def __init__(self, node_of_hospital: Mapping[int, int], clients_per_round: int, seed: int,
                 evaluate_every: int, num_rounds: int) -> None:
        super().__init__(min_available_nodes=len(node_of_hospital), weighted_by_key=keys.NUM_EXAMPLES,
                         train_metrics_aggr_fn=aggregate_train_metrics)
        self.node_of_hospital = dict(node_of_hospital)
        self.clients_per_round, self.seed = clients_per_round, seed
        self.evaluate_every, self.num_rounds = evaluate_every, num_rounds
        self.logs: dict[int, RoundLog] = {}
        self.current_arrays: ArrayRecord | None = None  # the global model sent this round

    def is_evaluation_round(self, server_round: int) -> bool:
        return server_round % self.evaluate_every == 0 or server_round == self.num_rounds

    def _messages(self, hospitals: list[int], arrays: ArrayRecord, config: ConfigRecord,
                  server_round: int, message_type: str) -> list[Message]:
        config[keys.SERVER_ROUND] = server_round
        record = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        return [Message(content=record, message_type=message_type, dst_node_id=self.node_of_hospital[h])
                for h in hospitals]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        sampled = sample_hospitals(len(self.node_of_hospital), self.clients_per_round, self.seed, server_round)
        self.logs[server_round] = RoundLog(sampled=sampled)
        self.current_arrays = arrays
        log(INFO, "configure_train: hospitals %s", sampled)
        return self._messages(sampled, arrays, config, server_round, MessageType.TRAIN)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = sort_replies(replies, "training", expected=len(self.logs[server_round].sampled))
        self.logs[server_round].train = {
            int(reply.content[keys.METRICS][keys.HOSPITAL_ID]): dict(reply.content[keys.METRICS]) for reply in ordered
        }
        return self.aggregate_arrays(ordered), self.train_metrics_aggr_fn(
            [reply.content for reply in ordered], self.weighted_by_key)

    def aggregate_arrays(self, ordered: list[Message]) -> ArrayRecord:
        """FedAvg's weighted average (by `num-examples`), over replies already sorted by hospital id."""
        return aggregate_arrayrecords([reply.content for reply in ordered], self.weighted_by_key)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not self.is_evaluation_round(server_round):
            return []
        return self._messages(sorted(self.node_of_hospital), arrays, config, server_round, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if not replies:
            return None
        # Hospitals report different metrics (an image-only one has no retrieval), so no Flower averaging here:
        # the per-hospital values are kept and summarized per modality group by the run recorder.
        ordered = sort_replies(replies, "evaluation", expected=len(self.node_of_hospital))
        self.logs[server_round].evaluate = {
            int(reply.content[keys.METRICS][keys.HOSPITAL_ID]): dict(reply.content[keys.METRICS]) for reply in ordered
        }
        return None


def sort_replies(replies: Iterable[Message], stage: str, expected: int) -> list[Message]:
    """Replies sorted by hospital id; a hospital that failed stops the run with its own error message."""
    replies = list(replies)
    errors = [reply for reply in replies if reply.has_error()]
    if errors or len(replies) < expected:
        reasons = "; ".join(f"node {reply.metadata.src_node_id}: {reply.error.reason}" for reply in errors)
        raise RuntimeError(
            f"{stage}: {len(replies) - len(errors)} of {expected} hospitals replied"
            + (f" ({reasons})" if reasons else " (the others timed out; raise federation.round_timeout_s)")
        )
    return sorted(replies, key=lambda reply: int(reply.content[keys.METRICS][keys.HOSPITAL_ID]))


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Loss averaged over hospitals that trained (weighted by pairs used); sample counts summed."""
    metrics = [record[keys.METRICS] for record in records]
    trained = [(m[keys.TRAIN_LOSS], m[keys.NUM_PAIRED_USED]) for m in metrics if m[keys.TRAIN_STEPS] > 0]
    total_pairs = sum(weight for _, weight in trained)
    summary = {key: float(sum(m[key] for m in metrics))
               for key in (keys.NUM_PAIRED_USED, keys.NUM_IMAGE_USED, keys.NUM_REPORT_USED, keys.NUM_EXAMPLES)}
    if total_pairs > 0:
        summary[keys.TRAIN_LOSS] = sum(loss * weight for loss, weight in trained) / total_pairs
    return MetricRecord(summary)
