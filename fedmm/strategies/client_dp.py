"""Client-level DP across the federation: Flower's DP strategy wrappers, with per-hospital RDP accounting.

McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models" (ICLR): each sampled
hospital's update is clipped to L2 norm C (on the server, or at the hospital by Flower's clipping mod),
the updates are averaged uniformly over the m sampled hospitals and N(0, (zC/m)²) is added to the
average. Adaptive clipping (Andrew et al., 2021, "Differentially Private Learning with Adaptive
Clipping", NeurIPS) moves C toward a quantile of the update norms, paying for the noisy count with a
share of the same noise multiplier z.

`ClientLevelDP` puts the pieces in the order that keeps the guarantee:
    HospitalFedAvg (uniform average)  ->  Flower wrapper (clip, average, add noise)
    ->  server optimizer (FedAvgM/FedAdam/FedYogi: post-processing of the noised average)
and keeps one Flower `RdpAccountant` per hospital.

Amplification by subsampling (`federation.sampling`):
- `fixed` (exactly m of N hospitals a round): no amplification is claimed (Flower's `no-amplification`
  model). A hospital's ε composes only the rounds whose average included its update.
- `poisson` (each hospital independently with probability q = m/N): ε is that of the Poisson-subsampled
  Gaussian (Flower's `poisson` model, add-or-remove-one hospital), composed over every round the hospital
  could have been drawn in, whether it was or not. A round whose sample is empty (or whose hospitals were
  all offline or late) still releases the current model plus the same noise, as the analysis assumes.
  The guarantee holds against an observer who does not know who was sampled: the sampling, like the
  noise, is drawn from the run's seed, so the seed (and the saved config.yaml) must stay secret.
"""

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedmm import protocol as keys
from fedmm.aggregation.server_optimizers import ServerOptimizer
from fedmm.config import ClientDPConfig, ConfigError
from fedmm.models.heads import HeadGroup
from fedmm.runs.checkpoint import Checkpoint
from fedmm.seeding import DP_NOISE_STREAM, derive_seed
from fedmm.strategies.base import Delegating, HospitalFedAvg
from fedmm.strategies.roster import Roster, RunStopped, hospital_of

log = logging.getLogger(__name__)

FIXED = {"server_fixed": DifferentialPrivacyServerSideFixedClipping,
         "client_fixed": DifferentialPrivacyClientSideFixedClipping}
ADAPTIVE = {"server_adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
            "client_adaptive": DifferentialPrivacyClientSideAdaptiveClipping}
CLIPPING_MODES = ("none", *FIXED, *ADAPTIVE)


def build_wrapper(inner: Strategy, dp: ClientDPConfig, num_sampled: int) -> Strategy:
    """The Flower wrapper named by `dp.clipping` around `inner`."""
    if dp.clipping in FIXED:
        return FIXED[dp.clipping](inner, dp.noise_multiplier, dp.clipping_norm, num_sampled)
    return ADAPTIVE[dp.clipping](inner, dp.noise_multiplier, num_sampled, initial_clipping_norm=dp.clipping_norm,
                                 target_clipped_quantile=dp.target_quantile, clip_norm_lr=dp.clip_norm_lr,
                                 clipped_count_stddev=count_stddev(dp, num_sampled))


def count_stddev(dp: ClientDPConfig, num_sampled: int) -> float:
    return dp.clipped_count_stddev if dp.clipped_count_stddev is not None else num_sampled / 20  # Flower's default


def release_noise_multiplier(dp: ClientDPConfig) -> float:
    """The Gaussian noise multiplier of one round's release, for every hospital in the round's sample.

    The average divides by the planned sample size m whoever contributes (`HospitalFedAvg` with uniform
    weights), so one hospital moves it by at most C/m and the noise std zC/m gives multiplier z. Adaptive
    clipping splits z between the update (z_Δ, larger) and the unclipped count (σ_b, sensitivity 1) so that
    z^-2 = z_Δ^-2 + (2σ_b)^-2 (Andrew et al., Theorem 1): the composite release costs a Gaussian with z."""
    return dp.noise_multiplier


def new_accountant(dp: ClientDPConfig, num_hospitals: int, poisson: bool = False) -> RdpAccountant:
    """A hospital's accountant: amplified by Poisson sampling of hospitals (`poisson`), or not at all."""
    sampling = SamplingMethod.POISSON if poisson else SamplingMethod.NO_AMPLIFICATION
    return RdpAccountant(PrivacyConfig(target_delta=dp.delta, population_size=num_hospitals,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=sampling))


class HospitalAccounts:
    """Each hospital's client-level ε: one Flower `RdpAccountant` per hospital, the budget check before a
    round is sent, and the charge after its release (what `ClientLevelDP` and SecAgg+ with client-level DP
    share)."""

    def __init__(self, dp: ClientDPConfig, roster: Roster) -> None:
        self.dp, self.roster = dp, roster
        self.amplified = roster.poisson  # ε amplified by Poisson sampling of hospitals
        self.accountants = {hospital: new_accountant(dp, roster.num_hospitals, self.amplified)
                            for hospital in roster.node_of_hospital}
        self.event = GaussianPrivacyEvent(release_noise_multiplier(dp), sample_size=roster.clients_per_round,
                                          population_size=roster.num_hospitals)
        self.eligible: list[int] = []  # this round: every hospital that could have been drawn

    def epsilon(self, hospital: int) -> float:
        accountant = self.accountants[hospital]
        return accountant.get_privacy_spent().epsilon if accountant.num_releases else 0.0

    def state(self) -> dict[int, dict]:
        return {h: accountant.state_dict() for h, accountant in self.accountants.items()}

    def load_state(self, states: dict[int, dict]) -> None:
        for hospital, state in states.items():
            self.accountants[hospital].load_state_dict(state)

    def start_round(self, server_round: int) -> None:
        """Before sending: drop every hospital whose ε would pass `max_epsilon` this round (or stop)."""
        if self.dp.max_epsilon is not None:
            # Amplified, every round costs every hospital that could be drawn; else only the drawn ones.
            candidates = self.roster.eligible() if self.amplified else self.roster.draw(server_round)
            over = [h for h in candidates
                    if self.accountants[h].would_exceed(self.event, max_epsilon=self.dp.max_epsilon)]
            if over:
                reason = (f"round {server_round}: hospital(s) {over} would pass privacy.client.max_epsilon="
                          f"{self.dp.max_epsilon} (spent: {[round(self.epsilon(h), 4) for h in over]})")
                if self.roster.stop_run_at_budget:
                    raise RunStopped(reason)
                log.warning("%s; they train no more", reason)
                for hospital in over:
                    self.roster.retire(hospital, "client-level privacy budget")
        self.eligible = self.roster.eligible()

    def charge(self, server_round: int) -> None:
        """After the round's release: amplified, every hospital that could have been drawn; else each one whose
        data could have moved it. Their ε goes into the round's log."""
        contributors = self.roster.contributors(server_round)
        for hospital in self.eligible if self.amplified else contributors:
            self.accountants[hospital].compose(self.event)
        for hospital, train_metrics in self.roster.logs[server_round].train.items():
            train_metrics[keys.CLIENT_DP_EPSILON] = self.epsilon(hospital)
        if self.amplified:
            self.roster.logs[server_round].client_epsilon = {h: self.epsilon(h) for h in self.eligible}

    def noise(self, server_round: int, seed: int) -> None:
        """Seed numpy's global generator (Flower's noise draws from it) for this round's release, so a resumed
        run adds the same noise as one that never stopped."""
        np.random.seed(derive_seed(seed, DP_NOISE_STREAM, server_round) % 2**32)

    def noised(self, arrays: ArrayRecord) -> ArrayRecord:
        """`arrays` plus the release's Gaussian noise, std z·C/m (Flower's `compute_stdv`)."""
        values = [array.numpy().copy() for array in arrays.values()]
        add_gaussian_noise_inplace(values, compute_stdv(self.dp.noise_multiplier, self.dp.clipping_norm,
                                                        self.roster.clients_per_round))
        return ArrayRecord({key: Array(value) for key, value in zip(arrays.keys(), values)})


class AveragingRelease(Delegating):
    """A wrapper that releases an averaging `HospitalFedAvg`'s rounds its own way (`ClientLevelDP`, SecAgg+).
    Besides the averaging strategy's state it keeps, across rounds and checkpoints, the server optimizer that
    steps after the release and, with client-level DP, the hospitals' accountants."""

    averaging: HospitalFedAvg
    server_optimizer: ServerOptimizer | None
    accounts: HospitalAccounts | None

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> Checkpoint:
        checkpoint = self.averaging.checkpoint(server_round, arrays)
        if self.server_optimizer is not None:
            checkpoint.optimizer_moments, checkpoint.optimizer_steps = self.server_optimizer.state()
        if self.accounts is not None:
            checkpoint.accountants = self.accounts.state()
        return checkpoint

    def restore(self, checkpoint: Checkpoint) -> None:
        self.averaging.restore(checkpoint)
        if self.server_optimizer is not None:
            self.server_optimizer.load_state(checkpoint.optimizer_moments, checkpoint.optimizer_steps)
        if self.accounts is not None:
            self.accounts.load_state(checkpoint.accountants)

    @property
    def has_global_model(self) -> bool:
        return self.averaging.has_global_model

    def initial_arrays(self, heads_state) -> ArrayRecord:
        return self.averaging.initial_arrays(heads_state)


class ClientLevelDP(AveragingRelease):
    """A Flower DP wrapper around a uniformly weighted `HospitalFedAvg`, the server optimizer after the
    noise, and each hospital's cumulative ε (reported as `client-dp-epsilon` in its training metrics)."""

    def __init__(self, inner: HospitalFedAvg, dp: ClientDPConfig, server_optimizer: ServerOptimizer | None,
                 seed: int) -> None:
        roster = inner.roster
        super().__init__(build_wrapper(FixedDenominatorAverage(inner), dp, roster.clients_per_round))
        assert inner.uniform_weights and inner.server_optimizer is None, "the noise is calibrated to a plain mean"
        self.averaging, self.dp, self.server_optimizer = inner, dp, server_optimizer  # averaging: the hospital strategy
        self.roster = roster
        self.accounts = HospitalAccounts(dp, roster)
        self.current_arrays: ArrayRecord | None = None
        self.seed = seed

    def epsilon(self, hospital: int) -> float:
        return self.accounts.epsilon(hospital)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        self.accounts.start_round(server_round)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Failed hospitals are handled as in the inner strategy (Flower's wrappers would skip the round silently).
        ordered = self.roster.answered(server_round, replies, "training")
        self.roster.log_train(server_round, ordered, self.averaging.download_bytes)
        self.roster.retire_exhausted(server_round, ordered)
        contributors = self.roster.contributors(server_round)
        assert self.current_arrays is not None
        if not contributors and not self.accounts.amplified:
            return None, None
        # An update of exactly zero (a hospital that had nothing to train on, or stopped at its budget) adds
        # nothing to the fixed-denominator sum; it is left out because Flower's clipping divides by its norm.
        moved = [reply for reply in ordered if hospital_of(reply) in contributors
                 and not unchanged(reply.content[keys.ARRAYS], self.current_arrays)]
        self.accounts.noise(server_round, self.seed)
        # A round in which no update moved the average still releases the current model plus the noise.
        noised = self.inner.aggregate_train(server_round, moved)[0] if moved else self.accounts.noised(
            self.current_arrays)
        self.accounts.charge(server_round)
        metrics = self.averaging.train_metrics_aggr_fn(
            [reply.content for reply in ordered if hospital_of(reply) in contributors], self.averaging.weighted_by_key)
        return step_after_noise(self.server_optimizer, self.current_arrays, noised), metrics


def step_after_noise(server_optimizer: ServerOptimizer | None, current: ArrayRecord,
                     noised: ArrayRecord | None) -> ArrayRecord | None:
    """The server optimizer's step from the noised average (post-processing); the noised average without one."""
    if noised is None or server_optimizer is None:
        return noised
    stepped = server_optimizer.step({key: array.numpy() for key, array in current.items()},
                                    {key: array.numpy() for key, array in noised.items()}, set(HeadGroup))
    return ArrayRecord({key: Array(value) for key, value in stepped.items()})


class FixedDenominatorAverage(Delegating):
    """What Flower's DP wrapper wraps: the hospital strategy's messages, and the average of the (clipped)
    updates it is handed, current + Σ updates / m for the planned m, even when fewer are handed in."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_arrays(list(replies)), None


def unchanged(sent_back: ArrayRecord, current: ArrayRecord) -> bool:
    return all(np.array_equal(sent_back[key].numpy(), current[key].numpy()) for key in current)


def check_client_privacy(dp: ClientDPConfig, num_hospitals: int, num_sampled: int, sampling: str = "fixed") -> None:
    """Impossible or unsound client-level settings, named with their fix (which strategies support client-level
    DP is each strategy's `StrategySpec.privacy`)."""
    if dp.clipping not in CLIPPING_MODES:
        raise ConfigError(f"privacy.client.clipping={dp.clipping!r} is unknown; valid: {list(CLIPPING_MODES)}")
    if dp.clipping == "none":
        return
    if not dp.noise_multiplier > 0:
        raise ConfigError(f"privacy.client.noise_multiplier={dp.noise_multiplier} must be > 0")
    if not dp.clipping_norm > 0:
        raise ConfigError(f"privacy.client.clipping_norm={dp.clipping_norm} must be > 0")
    if not 0 < dp.delta < 1 / num_hospitals:
        raise ConfigError(f"privacy.client.delta={dp.delta} is impossible: it must lie in (0, 1/num_hospitals) "
                          f"= (0, {1 / num_hospitals:.3g}); 1e-5 is usual")
    if dp.max_epsilon is not None and not dp.max_epsilon > 0:
        raise ConfigError(f"privacy.client.max_epsilon={dp.max_epsilon} is impossible: ε must be > 0")
    if dp.clipping in ADAPTIVE and sampling == "poisson":
        raise ConfigError(f"privacy.client.clipping={dp.clipping} with federation.sampling=poisson: the amplified "
                          "accounting is implemented for fixed clipping (an empty round would have to release a noisy "
                          "count too); use privacy.client.clipping=server_fixed or client_fixed, or "
                          "federation.sampling=fixed")
    if dp.clipping in ADAPTIVE:
        sigma_b = count_stddev(dp, num_sampled)
        if not dp.noise_multiplier < 2 * sigma_b:
            raise ConfigError(
                f"privacy.client: adaptive clipping spends part of noise_multiplier={dp.noise_multiplier} on the "
                f"unclipped count (clipped_count_stddev={sigma_b:g}); it needs noise_multiplier < "
                f"2 x clipped_count_stddev. Raise privacy.client.clipped_count_stddev (e.g. to "
                f"{dp.noise_multiplier:g}) or lower the noise multiplier"
            )
