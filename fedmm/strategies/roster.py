"""Who takes part in a federated run, round by round: the bookkeeping every server-side strategy shares.

A `Roster` knows the hospitals by id (Flower's node ids are random in every run, so it maps hospital
ids to nodes), draws each round's sample from the run's seed, and keeps what the hospitals said
(`RoundLog`), which ones failed (`lost`) and which ones train no more (`retired`). Strategies
(`HospitalFedAvg` and those built on it) hold one and do only their algorithm.

Failures: a hospital whose node does not reply (an error reply such as Flower's "Node Unavailable" for a
node that stopped sending heartbeats, or no reply within `federation.round_timeout_s`) is lost: it gets
no more messages. The run goes on while at least `min_hospitals` remain; below that it stops (a training
failure ends the run before that round is recorded, an evaluation failure after it), keeping every
finished round.

Simulated conditions (`fedmm.simulation.conditions`): a sampled hospital that is offline this round is sent
nothing and is not lost; one that reports `late` (it missed the round's virtual deadline) sent no update.
Neither is a contributor. Each round's virtual duration is kept next to what the hospitals said.

Privacy budgets: a hospital that reports `privacy-exhausted` (it did not train: one more round would pass
its sample-level budget) is retired: it is not sent training messages any more
(`privacy.on_budget: stop_hospital`), or the run stops after that round (`stop_run`).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.supercore import log

from fedmm import protocol as keys
from fedmm.protocol import without_update
from fedmm.simulation.conditions import Availability

SAMPLING_STREAM = 2


class RunStopped(Exception):
    """Ends the round loop early and cleanly (a privacy budget); the rounds already recorded are kept."""


class HospitalsLost(RunStopped):
    """Ends the round loop because fewer than `min_hospitals` hospitals remain; the run has failed, but the
    rounds already recorded are kept."""


@dataclass
class RoundLog:
    """What the hospitals said in one round, keyed by hospital id."""

    sampled: list[int] = field(default_factory=list)  # drawn for training (less the retired and lost ones)
    offline: list[int] = field(default_factory=list)  # of those, offline this round: sent nothing
    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    time_s: float | None = None  # the round's virtual duration (`conditions.compute`); None: no clock
    client_epsilon: dict[int, float] = field(default_factory=dict)  # amplified client-level DP: every charged one
    skipped: str | None = None  # why the round's aggregate could not be formed (secure aggregation's threshold)

    @property
    def asked(self) -> list[int]:
        """The sampled hospitals that were online: the ones sent a training message."""
        return [hospital for hospital in self.sampled if hospital not in self.offline]

    @property
    def late(self) -> list[int]:
        """Hospitals that missed the round's deadline: they answered, without an update."""
        return sorted(hospital for hospital, metrics in self.train.items() if metrics.get(keys.LATE))

    def fields(self) -> dict[str, Any]:
        """What else this round's line in metrics.jsonl holds: who was offline or late and the round's virtual
        duration (simulated conditions), why no aggregate was formed (`skipped`), and the cumulative
        client-level ε of every hospital this round charged, drawn or not (amplified accounting); empty when
        none of it applies."""
        fields: dict[str, Any] = {}
        if self.offline:
            fields["offline"] = list(self.offline)
        if self.time_s is not None:
            fields |= {"late": self.late, "round_time_s": self.time_s}
        if self.skipped:
            fields["skipped"] = self.skipped
        if self.client_epsilon:
            fields["client_dp_epsilon"] = {str(h): value for h, value in sorted(self.client_epsilon.items())}
        return fields


SAMPLING = ("fixed", "poisson")


def sample_hospitals(num_hospitals: int, sample_size: int, seed: int, server_round: int,
                     poisson: bool = False) -> list[int]:
    """Sorted hospital ids for a round; depends only on (seed, round), never on node ids. `sample_size` of
    them, or (`poisson`) each independently with probability sample_size / num_hospitals."""
    rng = np.random.default_rng([seed, SAMPLING_STREAM, server_round])
    if poisson:
        return [int(h) for h in np.flatnonzero(rng.random(num_hospitals) < sample_size / num_hospitals)]
    return sorted(int(h) for h in rng.choice(num_hospitals, size=sample_size, replace=False))


def sample_size(num_hospitals: int, clients_per_round: int | None, fraction: float) -> int:
    if clients_per_round is not None:
        return clients_per_round
    return max(1, int(round(num_hospitals * fraction)))


def hospital_of(reply: Message) -> int:
    return int(reply.content[keys.METRICS][keys.HOSPITAL_ID])


def record_bytes(record: RecordDict) -> int:
    """Payload bytes of the arrays in a message (metrics and config are a few hundred bytes more)."""
    return sum(len(array.data) for item in record.array_records.values() for array in item.values())


class Roster:
    """The hospitals of one run: seeded sampling by hospital id, the evaluation schedule, per-round logs,
    failures (`lost`) and budget retirements (`retired`)."""

    def __init__(self, node_of_hospital: Mapping[int, int], clients_per_round: int, seed: int, evaluate_every: int,
                 num_rounds: int, stop_run_at_budget: bool = False, min_hospitals: int | None = None,
                 round_timeout_s: float = 600.0, availability: Availability | None = None,
                 deadline_s: float | None = None, sampling: str = "fixed") -> None:
        self.node_of_hospital = dict(node_of_hospital)
        self.clients_per_round, self.seed = clients_per_round, seed  # poisson sampling: the expected count
        self.poisson = sampling == "poisson"
        self.evaluate_every, self.num_rounds = evaluate_every, num_rounds
        self.stop_run_at_budget = stop_run_at_budget
        self.min_hospitals = min_hospitals if min_hospitals is not None else len(node_of_hospital)
        self.round_timeout_s = round_timeout_s
        self.availability = availability  # who is offline in which round; None: always online
        self.deadline_s = deadline_s  # the rounds' virtual deadline; None: a round waits for the slowest
        self.retired: dict[int, str] = {}  # hospital -> why it trains no more
        self.lost: dict[int, str] = {}  # hospital -> how its node failed; it gets no more messages
        self.stop: RunStopped | None = None  # set in a round's aggregation; the next round raises it
        self.stop_round: int | None = None
        self.logs: dict[int, RoundLog] = {}
        self.evaluated: list[int] = []  # the hospitals sent this round's evaluation

    @property
    def num_hospitals(self) -> int:
        return len(self.node_of_hospital)

    def is_evaluation_round(self, server_round: int) -> bool:
        return server_round % self.evaluate_every == 0 or server_round in (self.num_rounds, self.stop_round)

    def draw(self, server_round: int) -> list[int]:
        """This round's hospitals: the seeded sample, less the retired and lost ones."""
        sample = sample_hospitals(self.num_hospitals, self.clients_per_round, self.seed, server_round, self.poisson)
        return [hospital for hospital in sample if hospital not in self.retired and hospital not in self.lost]

    def start_round(self, server_round: int) -> list[int]:
        """Open the round's log with its sample and return the hospitals to ask (the sample less the offline
        ones); a stop decided in the last round ends the run here."""
        if self.stop is not None:
            raise self.stop
        sampled = self.draw(server_round)
        down = set(self.availability.offline(server_round)) if self.availability is not None else set()
        self.logs[server_round] = RoundLog(sampled=sampled, offline=[h for h in sampled if h in down])
        return self.logs[server_round].asked

    def start_evaluation(self, server_round: int) -> list[int]:
        """The hospitals asked to evaluate: every reachable one on evaluation rounds, none otherwise."""
        self.evaluated = self.reachable() if self.is_evaluation_round(server_round) else []
        return self.evaluated

    def reachable(self) -> list[int]:
        """Hospitals whose nodes have not failed."""
        return [hospital for hospital in sorted(self.node_of_hospital) if hospital not in self.lost]

    def eligible(self) -> list[int]:
        """Hospitals a round can draw: neither lost nor retired."""
        return [hospital for hospital in self.reachable() if hospital not in self.retired]

    def retire(self, hospital: int, reason: str) -> None:
        self.retired.setdefault(hospital, reason)

    def contributors(self, server_round: int) -> list[int]:
        """Hospitals whose update entered this round's aggregate."""
        return [h for h, metrics in self.logs[server_round].train.items() if not without_update(metrics)]

    def answered(self, server_round: int, replies: Iterable[Message], stage: str, expected: list[int] | None = None,
                 stop_now: bool = True) -> list[Message]:
        """The successful replies, sorted by hospital id. Hospitals in `expected` (default: those asked)
        without one are lost; when fewer than `min_hospitals` remain the run stops: now (`stop_now`, this
        round is not recorded) or at the next round."""
        expected = self.logs[server_round].asked if expected is None else expected
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
                f"{self.num_hospitals} remain")
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

    def retire_exhausted(self, server_round: int, ordered: list[Message]) -> None:
        """Hospitals that reported `privacy-exhausted` train no more, or the run stops after this round."""
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

    def log_train(self, server_round: int, ordered: list[Message], download_bytes: int,
                  extra: Mapping[int, Mapping[str, float]] | None = None,
                  upload_bytes: Mapping[int, int] | None = None) -> None:
        """Keep each hospital's training metrics, the bytes it sent and received, and any `extra` per hospital.
        `upload_bytes`: what replies whose arrays were already dropped (added to the average on arrival) held."""
        sizes = upload_bytes or {}
        self.logs[server_round].train = {
            hospital_of(reply): dict(reply.content[keys.METRICS]) | dict((extra or {}).get(hospital_of(reply), {}))
            | {keys.UPLOAD_BYTES: sizes.get(hospital_of(reply), record_bytes(reply.content)),
               keys.DOWNLOAD_BYTES: download_bytes}
            for reply in ordered
        }
        self.logs[server_round].time_s = self.round_time(self.logs[server_round])

    def round_time(self, round_log: RoundLog) -> float | None:
        """The round's virtual duration: its slowest hospital, or the whole deadline when one was late."""
        times = [metrics[keys.TRAIN_TIME] for metrics in round_log.train.values() if keys.TRAIN_TIME in metrics]
        if not times:
            return None
        return self.deadline_s if round_log.late and self.deadline_s is not None else max(times)

    def log_evaluation(self, server_round: int, ordered: list[Message]) -> None:
        self.logs[server_round].evaluate = {hospital_of(reply): dict(reply.content[keys.METRICS]) for reply in ordered}
