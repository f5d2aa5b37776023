"""SecAgg+ around an averaging strategy: the server learns only the sum of the hospitals' weighted updates.

Bell et al., 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS), the protocol
of Bonawitz et al., 2017 on a sparse graph: each hospital masks its vector with one pairwise mask per
neighbour (they cancel in the sum) and one self mask, and Shamir-shares its mask seed and its pairwise key
among its neighbours, t of which reconstruct either. A hospital that drops out after sharing its keys has
its pairwise masks removed from the shares of its surviving neighbours; the survivors' self masks are
removed the same way.

Why a bridge: Flower 1.41 ships SecAgg+ only for its legacy API (`SecAggPlusWorkflow` drives a legacy
`Strategy` through `LegacyContext`; `secaggplus_mod` reads a legacy `FitRes` from the reply), and fedmm's
strategies are Message-API ones whose aggregation is modality-aware. `SecureAggregation` runs the same
four stages (setup, share keys, collect masked vectors, unmask) with the same record keys and math as
Flower's workflow, inside the strategy's own round: `configure_train` runs the first two stages and
returns the training messages with the forwarded key shares; the hospitals' replies are masked vectors
(`fedmm.clients.secagg`); `aggregate_train` sums them, runs the unmask stage and hands the unmasked sum
(`fedmm.aggregation.secure`) to the strategy's own finish (its server optimizer). What a hospital masks
carries its weighted update per array and its weight per head group, so the modality-aware average needs
no individual count either.

A round whose remaining hospitals leave some hospital with fewer than t live neighbours cannot be
unmasked: it is skipped (the global model stays as it was) and says why in metrics.jsonl (`skipped`).
Differences from Flower's workflow: the neighbour ring is shuffled from the run's seed, and a dropped
hospital's pairwise masks are removed only against the neighbours that added them.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedmm.aggregation.secure import SecureSum
from fedmm.aggregation.server_optimizers import ServerOptimizer
from fedmm.config import ClientDPConfig, SecAggConfig
from fedmm.models.heads import HeadGroup
from fedmm.seeding import SECAGG_STREAM
from fedmm.strategies.base import GROUP_COUNT_KEYS, HospitalFedAvg
from fedmm.strategies.client_dp import AveragingRelease, HospitalAccounts, step_after_noise

log = logging.getLogger(__name__)


def shares_and_threshold(cfg: SecAggConfig, hospitals: int) -> tuple[int, int]:
    """(neighbours per hospital including itself, shares needed), as Flower's workflow sets them."""
    if cfg.num_shares <= 1:
        shares = round(cfg.num_shares * hospitals)
        if shares < hospitals and shares % 2 == 0:
            shares += 1
        shares = hospitals if shares <= 2 else shares
    else:
        shares = int(cfg.num_shares)
    shares = min(shares, hospitals)
    threshold = max(2, round(cfg.threshold * shares)) if cfg.threshold <= 1 else int(cfg.threshold)
    return shares, threshold


@dataclass
class ProtocolRound:
    """One round of the protocol, by node id."""

    sampled: set[int]
    neighbours: dict[int, set[int]]
    threshold: int
    active: set[int] = field(default_factory=set)  # still taking part after the latest stage
    shared_keys: set[int] = field(default_factory=set)  # sent their key shares: their masks are in the sum
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    forward: dict[int, tuple[list[int], list[bytes]]] = field(default_factory=dict)  # dst -> (srcs, ciphertexts)
    training: dict[int, Message] = field(default_factory=dict)  # the strategy's training message per node
    failures: list[Message] = field(default_factory=list)  # error replies of the earlier stages (why nodes left)

    def short_of_threshold(self) -> list[int]:
        """Nodes whose secrets the unmasking may need, with fewer live neighbours than the threshold: once keys
        are shared, every node that shared them (a survivor's self mask, a dead node's pairwise masks); before,
        every node still in the round. A node that left before sharing its keys put no mask in any vector."""
        needed = self.shared_keys or self.active
        return sorted(n for n in needed if len(self.neighbours[n] & self.active) < self.threshold)


class SecureAggregation(AveragingRelease):
    """`inner`'s rounds under SecAgg+; `inner` is an averaging `HospitalFedAvg` (checked by the spec)."""

    def __init__(self, inner: HospitalFedAvg, cfg: SecAggConfig, seed: int, dp: ClientDPConfig | None = None,
                 server_optimizer: ServerOptimizer | None = None) -> None:
        super().__init__(inner)
        self.averaging, self.cfg, self.seed = inner, cfg, seed
        self.roster = inner.roster
        # Client-level DP (client_fixed): hospitals clip their updates and weigh 1 each, so W = 1 keeps the
        # quantization grid as fine as the updates; the server adds the noise and steps after it.
        self.accounts = HospitalAccounts(dp, self.roster) if dp is not None else None
        self.server_optimizer = server_optimizer if dp is not None else None
        self.max_weight = 1.0 if dp is not None else cfg.max_weight
        self.hospital_by_node = {node: hospital for hospital, node in self.roster.node_of_hospital.items()}
        self.grid: Grid | None = None
        self.round: ProtocolRound | None = None

    def hospital_of_node(self, node: int) -> int:
        return self.hospital_by_node[node]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.accounts is not None:
            self.accounts.start_round(server_round)
        messages = list(self.averaging.configure_train(server_round, arrays, config, grid))
        self.grid, self.round = grid, None
        nodes = sorted(message.metadata.dst_node_id for message in messages)
        shares, threshold = shares_and_threshold(self.cfg, len(nodes))
        if len(nodes) < max(2, threshold):
            self.skip(server_round, f"{len(nodes)} hospital(s) asked; secure aggregation needs at least "
                                    f"{max(2, threshold)} (secagg.threshold={self.cfg.threshold:g})")
            return []
        # Node ids are 64-bit unsigned: shuffle positions, never the ids through numpy (they would turn float).
        order = np.random.default_rng([self.seed, SECAGG_STREAM, server_round]).permutation(len(nodes))
        ring, half = [nodes[int(position)] for position in order], shares // 2
        neighbours = {node: {ring[(index + offset) % len(ring)] for offset in range(-half, half + 1)}
                      for index, node in enumerate(ring)}
        state = self.round = ProtocolRound(set(nodes), neighbours, threshold, active=set(nodes),
                                           training={m.metadata.dst_node_id: m for m in messages})
        setup = {Key.SAMPLE_NUMBER: len(nodes), Key.SHARE_NUMBER: shares, Key.THRESHOLD: threshold,
                 Key.CLIPPING_RANGE: float(self.cfg.clipping_range), Key.TARGET_RANGE: self.cfg.quantization_range,
                 Key.MOD_RANGE: self.cfg.modulus_range, Key.MAX_WEIGHT: float(self.max_weight)}
        for reply in self.stage(Stage.SETUP, {node: dict(setup) for node in state.active}):
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            state.public_keys[reply.metadata.src_node_id] = [record[Key.PUBLIC_KEY_1], record[Key.PUBLIC_KEY_2]]
        if not self.enough(server_round, "setup"):
            return []
        share_keys = {node: {str(n): state.public_keys[n] for n in neighbours[node] & state.active}
                      for node in state.active}
        state.forward = {node: ([], []) for node in state.active}
        for reply in self.stage(Stage.SHARE_KEYS, share_keys):
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            for destination, ciphertext in zip(record[Key.DESTINATION_LIST], record[Key.CIPHERTEXT_LIST], strict=True):
                if destination in state.forward:
                    state.forward[destination][0].append(reply.metadata.src_node_id)
                    state.forward[destination][1].append(ciphertext)
        state.shared_keys = set(state.active)
        if not self.enough(server_round, "share keys"):
            return []
        collect = []
        for node in sorted(state.active):  # the strategy's messages share one RecordDict: a new one per node
            message, (sources, ciphertexts) = state.training[node], state.forward[node]
            stage = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts,
                                  Key.SOURCE_LIST: sources})
            content = RecordDict(dict(message.content.items()) | {RECORD_KEY_CONFIGS: stage})
            collect.append(Message(content, dst_node_id=node, message_type=message.metadata.message_type))
        return collect

    def stage(self, stage: str, configs: dict[int, dict]) -> list[Message]:
        """Send one stage's configs to the active nodes; the nodes that do not answer leave the round."""
        assert self.grid is not None and self.round is not None
        messages = [Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **values})}),
                            dst_node_id=node, message_type=MessageType.TRAIN)
                    for node, values in sorted(configs.items())]
        answers = list(self.grid.send_and_receive(messages, timeout=self.roster.round_timeout_s))
        self.round.failures += [reply for reply in answers if reply.has_error()]
        replies = [reply for reply in answers if not reply.has_error()]
        self.round.active = {reply.metadata.src_node_id for reply in replies}
        return sorted(replies, key=lambda reply: reply.metadata.src_node_id)

    def enough(self, server_round: int, stage: str) -> bool:
        """Whether every hospital still has `threshold` live neighbours; else the round is skipped."""
        assert self.round is not None
        short = self.round.short_of_threshold()
        if short:
            hospitals = [self.hospital_of_node(node) for node in short]
            self.skip(server_round, f"after the {stage} stage, hospital(s) {hospitals} have fewer than "
                                    f"{self.round.threshold} live neighbours (secagg.threshold)")
        return not short

    def skip(self, server_round: int, why: str) -> None:
        log.warning("round %d: secure aggregation skipped: %s; the global model stays as it was", server_round, why)
        self.roster.logs[server_round].skipped = why
        self.round = None  # nobody is sent (or owes) this round's training

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        state, replies = self.round, list(replies)
        # Every hospital asked at setup owes a reply: one that failed at any stage is lost, as without SecAgg.
        expected = [] if state is None else [self.hospital_of_node(node) for node in sorted(state.sampled)]
        failures = state.failures if state is not None else []
        ordered = self.roster.answered(server_round, [*replies, *failures], "training", expected=expected)
        self.roster.log_train(server_round, ordered, self.averaging.download_bytes,
                              upload_bytes={self.hospital_of_node(r.metadata.src_node_id): masked_bytes(r)
                                            for r in ordered})
        self.roster.retire_exhausted(server_round, ordered)
        secure = self.unmasked_sum(server_round, ordered) if state is not None and ordered else None
        totals = MetricRecord({GROUP_COUNT_KEYS[group]: secure.weight(group) * self.max_weight
                               for group in HeadGroup} if secure is not None else {})
        if self.accounts is None:
            if secure is None or not secure.trained():
                return None, totals
            return self.averaging.finish_average(secure), totals
        # Client-level DP: current + Σ clipped Δ / m, plus N(0, (zC/m)²), then the server optimizer; a round
        # with nothing to unmask still releases noise when the accounting assumes it (Poisson sampling).
        if secure is None and not self.accounts.amplified:
            return None, totals
        average = secure.result() if secure is not None else {key: a.numpy() for key, a in self.current.items()}
        self.accounts.noise(server_round, self.seed)
        noised = self.accounts.noised(ArrayRecord({key: Array(value) for key, value in average.items()}))
        self.accounts.charge(server_round)
        return step_after_noise(self.server_optimizer, self.current, noised), totals

    @property
    def current(self) -> ArrayRecord:
        assert self.averaging.current_arrays is not None, "configure_train stores the global model first"
        return self.averaging.current_arrays

    def unmasked_sum(self, server_round: int, ordered: list[Message]) -> SecureSum | None:
        """The masked vectors' sum, with the survivors' self masks and the dead nodes' pairwise masks removed
        (the unmask stage), read as the round's average; None when the round could not be unmasked."""
        state = self.round
        assert state is not None
        masked = None
        for reply in ordered:
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            vector = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
            masked = vector if masked is None else parameters_addition(masked, vector)
        assert masked is not None
        masked = parameters_mod(masked, self.cfg.modulus_range)
        state.active = {reply.metadata.src_node_id for reply in ordered}
        if not self.enough(server_round, "collect masked vectors"):
            return None
        dead = state.shared_keys - state.active
        unmask = {node: {Key.ACTIVE_NODE_ID_LIST: sorted(state.neighbours[node] & state.active),
                         Key.DEAD_NODE_ID_LIST: sorted(state.neighbours[node] & dead)} for node in state.active}
        contributors = set(state.active)
        shares: dict[int, list[bytes]] = {node: [] for node in state.shared_keys}
        for reply in self.stage(Stage.UNMASK, unmask):
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True):
                shares[owner].append(share)
        short = sorted(self.hospital_of_node(node) for node, got in shares.items() if len(got) < state.threshold)
        if short:
            self.skip(server_round, f"too few shares came back to unmask hospital(s) {short}")
            return None
        shapes = get_parameters_shape(masked)
        for node, got in shares.items():
            secret = combine_shares(got)
            if node in contributors:  # its self mask
                masked = parameters_subtraction(masked, pseudo_rand_gen(secret, self.cfg.modulus_range, shapes))
                continue
            for neighbour in sorted(state.neighbours[node] & contributors):  # the masks it shared with survivors
                key = generate_shared_key(bytes_to_private_key(secret),
                                          bytes_to_public_key(state.public_keys[neighbour][0]))
                mask = pseudo_rand_gen(key, self.cfg.modulus_range, shapes)
                masked = (parameters_addition if node > neighbour else parameters_subtraction)(masked, mask)
        summed = self.dequantize(parameters_mod(masked, self.cfg.modulus_range))
        current = {key: array.numpy() for key, array in self.current.items()}
        planned = self.roster.clients_per_round if self.accounts is not None else None
        return SecureSum(current, summed, len(contributors), self.max_weight, planned)

    def dequantize(self, summed: list[np.ndarray]) -> list[np.ndarray]:
        """The float sum of the hospitals' vectors from the sum of their quantized ones (Flower's inverse
        quantization, without its division by the number of hospitals)."""
        factor, quantized = factor_extract(summed)
        hospitals = round(int(factor) / self.cfg.quantization_range)
        step = 2 * self.cfg.clipping_range / self.cfg.quantization_range
        return [array.astype(np.float64) * step - hospitals * self.cfg.clipping_range for array in quantized]


def masked_bytes(reply: Message) -> int:
    """Bytes of the masked vector a hospital sent (it sends no arrays)."""
    return sum(len(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])

