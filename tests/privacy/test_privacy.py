"""Privacy on tiny inputs: accounting against independent accountants, clipping bounds, seeded noise,
the reference-bank objective, client-level averaging and accounting, and impossible budgets."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import configured, heads, tiny_split, user_config
from opacus.accountants.analysis import rdp as opacus_rdp

from fedmm.compose import compose_config
from fedmm.config import ClientDPConfig, ConfigError, SampleDPConfig
from fedmm.models.losses import reference_bank_info_nce
from fedmm.privacy.accounting import (
    EPSILON_TOLERANCE,
    SampledGaussianSteps,
    composed,
    epsilon_spent,
    ledger_from_lists,
    ledger_to_lists,
    noise_for_target,
    pld_epsilon,
)
from fedmm.privacy.sample_level import plan_all_hospitals, plan_sample_privacy
from fedmm.strategies.client_dp import ClientLevelDP, new_accountant, release_noise_multiplier
from fedmm.training.bank import DPSGD, make_private, train_heads_on_bank
from fedmm.training.ghost import (
    FROZEN_UNDER_DP,
    bank_loss,
    clipped_gradient_sum,
    dp_trainable,
    frozen_under_dp,
    materialized_pair_gradients,
)
from fedmm.training.updates import snapshot
from fedmm.validation import validate_config

pytestmark = pytest.mark.usefixtures("flower_run_identity")  # the strategy tests build Flower Messages

# Three rounds a hospital might log: different σ, rates and step counts (e.g. after a resume with new settings).
LEDGER = (SampledGaussianSteps(1.1, 64 / 1000, 30), SampledGaussianSteps(1.1, 64 / 1000, 30),
          SampledGaussianSteps(0.8, 0.25, 8))


def opacus_epsilon(ledger, delta: float) -> float:
    """Opacus' RDP analysis called directly, with its default orders."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = sum(opacus_rdp.compute_rdp(q=e.sample_rate, noise_multiplier=e.noise_multiplier, steps=e.steps,
                                     orders=orders) for e in ledger)
    return float(opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def dp_accounting_epsilon(ledger, delta: float) -> float:
    """Google's dp-accounting, an independent implementation of the sampled Gaussian's RDP."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for entry in ledger:
        event = dp_accounting.PoissonSampledDpEvent(
            entry.sample_rate, dp_accounting.GaussianDpEvent(entry.noise_multiplier)
        )
        accountant.compose(event, entry.steps)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("delta", [1e-5, 1.6e-4])
def test_cumulative_epsilon_agrees_with_opacus_and_dp_accounting_within_1_percent(delta):
    reported = epsilon_spent(LEDGER, delta)
    assert reported == pytest.approx(opacus_epsilon(LEDGER, delta), rel=0.01)
    assert reported == pytest.approx(dp_accounting_epsilon(LEDGER, delta), rel=0.01)
    # cumulative, never per round: every round adds to it
    assert epsilon_spent(LEDGER[:1], delta) < epsilon_spent(LEDGER[:2], delta) < reported
    assert epsilon_spent((), delta) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_long_ledger_costs_one_evaluation_per_mechanism_and_the_same_epsilon(accountant):
    rounds = (SampledGaussianSteps(1.1, 64 / 1000, 16),) * 50 + (SampledGaussianSteps(1.1, 64 / 1000, 0),
                                                                  SampledGaussianSteps(0.8, 0.25, 8))
    assert composed(rounds) == [(1.1, 64 / 1000, 800), (0.8, 0.25, 8)]  # equal (σ, q) add their steps
    entry_by_entry = [(e.noise_multiplier, e.sample_rate, e.steps) for e in rounds if e.steps]
    reference = opacus_epsilon(rounds, 1e-5) if accountant == "rdp" else pld_epsilon(entry_by_entry, 1e-5)
    assert epsilon_spent(rounds, 1e-5, accountant) == pytest.approx(reference, rel=1e-9 if accountant == "rdp"
                                                                    else 1e-3)


def prv_epsilon(ledger, delta: float) -> float:
    """Opacus' PRV accountant (Gopi, Lee and Wutschitz, 2021): numerical composition of privacy random
    variables, independent of dp_accounting's privacy loss distributions."""
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger]
    return float(accountant.get_epsilon(delta=delta))


@pytest.mark.parametrize("delta", [1e-5, 1.6e-3])
def test_pld_epsilon_agrees_with_opacus_prv_within_1_percent_and_is_tighter_than_rdp(delta):
    reported = epsilon_spent(LEDGER, delta, accountant="pld")
    assert reported == pytest.approx(prv_epsilon(LEDGER, delta), rel=0.01)
    assert reported < epsilon_spent(LEDGER, delta, accountant="rdp")
    assert epsilon_spent(LEDGER[:1], delta, "pld") < epsilon_spent(LEDGER[:2], delta, "pld") < reported
    assert epsilon_spent((), delta, "pld") == 0.0


def test_a_pld_calibrated_noise_spends_the_target_and_needs_less_noise_than_rdp():
    target, delta, rate, steps = 4.0, 1e-5, 64 / 1000, 300
    pld_noise = noise_for_target(target, delta, rate, steps, accountant="pld")
    spent = epsilon_spent((SampledGaussianSteps(pld_noise, rate, steps),), delta, "pld")
    assert target - EPSILON_TOLERANCE <= spent <= target
    assert pld_noise < noise_for_target(target, delta, rate, steps, accountant="rdp")


def test_ledger_survives_the_flat_lists_flower_stores():
    assert ledger_from_lists(ledger_to_lists(LEDGER)) == LEDGER


def test_plan_from_a_target_spends_at_most_the_target_over_the_planned_rounds():
    cfg = replace(
        user_config(),
        train=configured("train", batch_size=64, local_epochs=2),
        privacy=_privacy(configured("privacy.sample", enabled=True, target_epsilon=4.0)),
    )
    plan = plan_sample_privacy(cfg, num_paired=640, hospital=0)
    assert plan.dpsgd.sample_rate == 0.1 and plan.steps_per_round == 2 * 10 and plan.delta == 1 / 6400
    assert 4.0 - 0.011 <= plan.planned_epsilon <= 4.0  # Opacus' search tolerance
    ledger = (plan.round_steps(),) * (cfg.federation.rounds - 1)
    assert not plan.would_exceed(ledger)  # the last planned round still fits
    assert plan.would_exceed(ledger + (plan.round_steps(),))  # one more would not
    assert plan_sample_privacy(cfg, num_paired=0, hospital=1) is None  # no pairs: nothing trained, nothing spent


@pytest.mark.parametrize(
    "sample, message",
    [
        (configured("privacy.sample", enabled=True, target_epsilon=0.0), "target_epsilon=0.0 is impossible"),
        (configured("privacy.sample", enabled=True, target_epsilon=-1.0), "target_epsilon=-1.0 is impossible"),
        (configured("privacy.sample", enabled=True, target_epsilon=4.0, delta=1.0), "delta=1.0 is impossible"),
        (configured("privacy.sample", enabled=True, target_epsilon=4.0, delta=0.0), "delta=0.0 is impossible"),
        (
            configured("privacy.sample", enabled=True, noise_multiplier=1.0, max_epsilon=0.0),
            "max_epsilon=0.0 is impossible",
        ),
        (configured("privacy.sample", enabled=True), "set exactly one of noise_multiplier and target_epsilon"),
        (configured("privacy.sample", enabled=True, noise_multiplier=1.0, target_epsilon=2.0), "set exactly one"),
        (configured("privacy.sample", enabled=True, noise_multiplier=1.0, accountant="prv"),
         r"privacy.sample.accountant='prv' is unknown; valid: \['rdp', 'pld'\]"),
    ],
)
def test_impossible_sample_budgets_fail_validation(sample, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(replace(user_config(), privacy=_privacy(sample)))


def test_a_target_no_noise_can_reach_fails_before_training_naming_the_hospital():
    cfg = replace(user_config(), privacy=_privacy(configured("privacy.sample", enabled=True, target_epsilon=0.001)))
    validate_config(cfg)  # reachable or not depends on each hospital's n: checked once counts are known
    with pytest.raises(
        ConfigError, match=r"target_epsilon=0.001 cannot be reached by hospital 1 .*raise target_epsilon"
    ):
        plan_all_hospitals(cfg, {0: 0, 1: 500})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["privacy=dp_sgd", "train.objective=in_batch"], "in-batch negatives .* does not bound its influence"),
        (["privacy=dp_sgd", "strategy=fedprox"], "privacy.sample \\(DP-SGD\\) is not wired to 'fedprox'.*'fedavg'"),
        (["privacy=client_fixed"], "needs strategy.modality_aware=false"),  # the default averaging is modality-aware
        (["privacy=client_fixed", "strategy=ditto"], "needs a uniformly averaged strategy"),
        (
            ["privacy=client_fixed", "strategy.modality_aware=false", "privacy.client.delta=0.5"],
            r"delta=0.5 is impossible",
        ),
        (
            ["privacy=client_fixed", "strategy.modality_aware=false", "privacy.client.clipping=server_adaptive"],
            "Raise privacy.client.clipped_count_stddev",
        ),
        (
            ["privacy=client_fixed", "strategy.modality_aware=false", "privacy.client.clipping=sometimes"],
            "clipping='sometimes' is unknown",
        ),
        (["privacy.on_budget=keep_going"], "on_budget='keep_going' is unknown"),
        (["train.objective=ranking"], "train.objective='ranking' is unknown"),
        (["strategy=fedper", "resume=true"], "resuming is supported for"),
    ],
)
def test_unsound_or_unknown_privacy_options_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_bank_loss_by_hand():
    image = torch.tensor([[1.0, 0.0]])
    report = torch.tensor([[0.6, 0.8]])
    bank_images, bank_reports = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = reference_bank_info_nce(image, report, bank_images, bank_reports, torch.tensor(2.0))
    # image -> [positive 2·0.6, bank reports 2·1, 2·0]; report -> [positive 1.2, bank image 2·0.8]
    expected_i2r = -1.2 + math.log(math.exp(1.2) + math.exp(2.0) + math.exp(0.0))
    expected_r2i = -1.2 + math.log(math.exp(1.2) + math.exp(1.6))
    assert loss.image_to_report.item() == pytest.approx(expected_i2r, rel=1e-6)
    assert loss.report_to_image.item() == pytest.approx(expected_r2i, rel=1e-6)
    assert loss.total.item() == pytest.approx((expected_i2r + expected_r2i) / 2, rel=1e-6)


def _pair_gradient(loss_fn, model, batch: slice) -> torch.Tensor:
    """Gradient of pair 0's own loss term, computed in a batch of the given pairs."""
    data = tiny_split(8)
    model.zero_grad()
    loss_fn(model, data.image_features[batch], data.report_features[batch])[0].backward()
    return torch.cat([p.grad.flatten() for p in model.image_head.parameters()])


def test_a_pairs_bank_loss_term_does_not_depend_on_the_other_pairs_but_in_batch_clips_does():
    bank = tiny_split(16)
    with torch.no_grad():
        model = heads()
        bank_images, bank_reports = model.embed_images(bank.image_features), model.embed_reports(bank.report_features)

    def bank_terms(m, images, reports):
        return reference_bank_info_nce(
            m.embed_images(images), m.embed_reports(reports), bank_images, bank_reports, m.scale()
        ).total

    def in_batch_terms(m, images, reports):  # CLIP's per-row terms, i -> all reports of the batch
        logits = m.scale() * m.embed_images(images) @ m.embed_reports(reports).T
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)), reduction="none")

    assert torch.allclose(
        _pair_gradient(bank_terms, model, slice(0, 1)), _pair_gradient(bank_terms, model, slice(0, 8)), atol=1e-6
    )
    assert not torch.allclose(
        _pair_gradient(in_batch_terms, model, slice(0, 2)),
        _pair_gradient(in_batch_terms, model, slice(0, 8)),
        atol=1e-4,
    )


def perturbed_heads():
    """Heads whose LayerNorms are not at their initial identity, as after training without DP."""
    model = heads()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, parameter in model.named_parameters():
            if name.startswith(FROZEN_UNDER_DP[1:]):
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def test_materialized_pair_gradients_include_the_bank_path_and_match_autograd():
    data, bank, model = tiny_split(5), tiny_split(16), heads()
    trainable = dict(model.named_parameters())
    per_pair = materialized_pair_gradients(
        model, trainable, data.image_features, data.report_features, bank.image_features, bank.report_features
    )
    for pair in (0, 3):
        model.zero_grad()
        bank_loss(
            model,
            data.image_features[pair : pair + 1],
            data.report_features[pair : pair + 1],
            bank.image_features,
            bank.report_features,
        )[0].backward()
        for name, parameter in trainable.items():
            torch.testing.assert_close(per_pair[name][pair], parameter.grad, atol=1e-5, rtol=1e-4)


def test_dp_trains_every_linear_layer_and_freezes_the_temperature_and_layernorms():
    names = set(dp_trainable(heads()))
    assert names == {f"{head}.{layer}.{kind}" for head in ("image_head", "report_head") for layer in (1, 3)
                     for kind in ("weight", "bias")}


@pytest.mark.parametrize("bound", [1e-3, 0.05, 1e3])  # every pair clipped, some, none
def test_ghost_clipping_gives_the_norms_and_clipped_sum_of_the_materialized_per_pair_gradients(bound):
    data, bank, model = tiny_split(7), tiny_split(16), perturbed_heads()
    trainable = dp_trainable(model)
    per_pair = materialized_pair_gradients(model, trainable, data.image_features, data.report_features,
                                  bank.image_features, bank.report_features)
    norms = torch.cat([g.flatten(1) for g in per_pair.values()], dim=1).norm(dim=1)  # (B,)
    factors = (bound / (norms + 1e-6)).clamp(max=1.0)
    with frozen_under_dp(model):
        ghost_norms = clipped_gradient_sum(model, data.image_features, data.report_features, bank.image_features,
                                           bank.report_features, bound)
    torch.testing.assert_close(ghost_norms, norms, atol=1e-6, rtol=1e-4)
    for name, parameter in model.named_parameters():
        if name in trainable:
            expected = (factors.view(-1, *[1] * (per_pair[name].dim() - 1)) * per_pair[name]).sum(dim=0)
            torch.testing.assert_close(parameter.grad, expected, atol=1e-6, rtol=1e-4)
        else:
            assert parameter.grad is None and parameter.requires_grad  # frozen only within the context


def test_dp_sgd_clips_every_pairs_gradient_to_the_bound():
    """σ = 0 and SGD with lr 1: one step moves the parameters by exactly the sum of clipped per-pair gradients
    / expected batch size, so with one pair per step the move is min(||g||, C)."""
    data, bank, bound = tiny_split(4), tiny_split(16), 1e-3
    for pair in range(4):
        model = heads()
        trainable = dp_trainable(model)
        before = torch.cat([p.detach().flatten().clone() for p in trainable.values()])
        optimizer = make_private(
            torch.optim.SGD(trainable.values(), lr=1.0),
            DPSGD(noise_multiplier=0.0, max_grad_norm=bound, sample_rate=1.0),
            expected_batch_size=1,
            seed=0,
        )
        row = slice(pair, pair + 1)
        with frozen_under_dp(model):
            unclipped = clipped_gradient_sum(model, data.image_features[row], data.report_features[row],
                                             bank.image_features, bank.report_features, bound)
            optimizer.step()
        after = torch.cat([p.detach().flatten() for p in trainable.values()])
        assert unclipped.item() > bound  # so the bound is what limits the move
        assert (after - before).norm().item() == pytest.approx(bound, rel=1e-3)


def test_dp_sgd_noise_and_sampling_are_seeded():
    data, bank = tiny_split(40), tiny_split(16)
    cfg, dp = configured("train", local_epochs=2, batch_size=8, lr=1e-2, bank_size=8), DPSGD(1.0, 1.0, sample_rate=0.2)

    def trained(seed: int) -> dict:
        model = heads()
        result = train_heads_on_bank(model, data, bank, cfg, seed, dp=dp)
        assert result.steps == 2 * 5 and math.isnan(result.loss)  # 1/q steps per epoch; no private loss published
        return snapshot(model)

    first, again, other = trained(3), trained(3), trained(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    initial = snapshot(heads())
    assert all(torch.equal(first[name], initial[name]) for name in initial if name not in dp_trainable(heads()))
    assert not any(torch.equal(first[name], initial[name]) for name in dp_trainable(heads()))


def test_bank_objective_without_dp_trains_every_pair_and_reports_its_loss():
    model, cfg = heads(), configured("train", local_epochs=1, batch_size=8, lr=1e-2, bank_size=8)
    result = train_heads_on_bank(model, tiny_split(20), tiny_split(16), cfg, seed=0)
    assert result.steps == 3 and result.num_paired_used == 20 and not math.isnan(result.loss)
    unimodal = train_heads_on_bank(heads(), tiny_split(20, paired=False), tiny_split(16), cfg, seed=0)
    assert unimodal.steps == 0 and unimodal.num_paired_used == 0


def test_client_level_epsilon_is_flowers_rdp_accountant_for_every_release():
    dp = configured("privacy.client", clipping="server_fixed", noise_multiplier=1.2, delta=1e-5)
    accountant = new_accountant(dp, num_hospitals=6)
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    for _ in range(5):
        accountant.compose(GaussianPrivacyEvent(release_noise_multiplier(dp), sample_size=3, population_size=6))
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    independent = RdpAccountant()
    independent.compose(dp_accounting.GaussianDpEvent(1.2), 5)  # no amplification: the sample is public
    assert accountant.get_privacy_spent().epsilon == pytest.approx(independent.get_epsilon(1e-5), rel=0.01)


def _reply(hospital: int, arrays: dict, trained: bool = True):
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    from fedmm import protocol as keys

    metrics = {
        keys.HOSPITAL_ID: hospital,
        keys.NUM_EXAMPLES: 10,
        keys.NUM_PAIRED_USED: 10 * trained,
        keys.NUM_IMAGE_USED: 10 * trained,
        keys.NUM_REPORT_USED: 10 * trained,
        keys.TRAIN_STEPS: int(trained),
        keys.TRAIN_LOSS: 1.0,
    }
    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}),
            keys.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content, dst_node_id=0, message_type="train")


def test_client_level_average_divides_by_the_planned_sample_and_skips_zero_updates(monkeypatch):
    from flwr.app import ArrayRecord, ConfigRecord

    from fedmm.strategies.base import HospitalFedAvg
    from fedmm.strategies.roster import Roster

    inner = HospitalFedAvg(Roster({0: 10, 1: 11, 2: 12}, clients_per_round=3, seed=0, evaluate_every=1, num_rounds=2),
                           uniform_weights=True)
    strategy = ClientLevelDP(
        inner,
        configured("privacy.client", clipping="server_fixed", noise_multiplier=1e-9, clipping_norm=100.0),
        None,
        seed=0,
    )
    current = {"w": np.array([1.0, 1.0])}
    list(strategy.configure_train(1, ArrayRecord({"w": _array(current["w"])}), ConfigRecord(), grid=None))
    replies = [_reply(0, {"w": [3.0, 1.0]}), _reply(1, {"w": [1.0, 4.0]}), _reply(2, current, trained=False)]
    arrays, _ = strategy.aggregate_train(1, replies)
    # (2, 0) and (0, 3) summed, over the planned 3: the untrained hospital's zero update still counts in m
    np.testing.assert_allclose(arrays["w"].numpy(), [1 + 2 / 3, 1 + 3 / 3], atol=1e-6)
    # every sampled hospital is accounted (its data could have moved the release)
    assert strategy.epsilon(0) == strategy.epsilon(2) > 0
    assert inner.roster.logs[1].train[2]["client-dp-epsilon"] == strategy.epsilon(2)


def test_client_level_budget_retires_a_hospital_before_it_passes_max_epsilon():
    from flwr.app import ArrayRecord, ConfigRecord

    from fedmm.strategies.base import HospitalFedAvg
    from fedmm.strategies.roster import Roster, RunStopped

    def run(stop_run: bool):
        roster = Roster({0: 10, 1: 11}, clients_per_round=2, seed=0, evaluate_every=1, num_rounds=5,
                        stop_run_at_budget=stop_run)
        inner = HospitalFedAvg(roster, uniform_weights=True)
        dp = configured("privacy.client", clipping="server_fixed", noise_multiplier=2.0, clipping_norm=1.0, delta=1e-5)
        one_round = _epsilon_after(dp, 1)
        dp = configured(
            "privacy.client",
            clipping="server_fixed",
            noise_multiplier=2.0,
            clipping_norm=1.0,
            delta=1e-5,
            max_epsilon=(one_round + _epsilon_after(dp, 2)) / 2,
        )  # room for one release only
        strategy = ClientLevelDP(inner, dp, None, seed=0)
        arrays = ArrayRecord({"w": _array(np.zeros(2))})
        for server_round in (1, 2):
            messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None))
            strategy.aggregate_train(
                server_round, [_reply(h, {"w": [0.5, 0.5]}) for h in inner.roster.logs[server_round].sampled]
            )
            assert all(strategy.epsilon(h) <= dp.max_epsilon for h in (0, 1))
        return inner, messages

    inner, messages = run(stop_run=False)
    assert messages == [] and set(inner.roster.retired) == {0, 1}
    with pytest.raises(RunStopped, match="would pass privacy.client.max_epsilon"):
        run(stop_run=True)


def _epsilon_after(dp: ClientDPConfig, releases: int) -> float:
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    accountant = new_accountant(dp, num_hospitals=2)
    accountant.compose(GaussianPrivacyEvent(dp.noise_multiplier, 2, 2), releases)
    return accountant.get_privacy_spent().epsilon


def _array(values):
    from flwr.app import Array

    return Array(np.asarray(values, dtype=np.float32))


def _privacy(sample: SampleDPConfig):
    return configured("privacy", sample=sample)


def test_poisson_sampled_client_level_epsilon_is_dp_accountings_amplified_one():
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    dp = configured("privacy.client", clipping="server_fixed", noise_multiplier=1.0, delta=1e-5)
    amplified, plain = new_accountant(dp, 20, poisson=True), new_accountant(dp, 20)
    for accountant in (amplified, plain):
        accountant.compose(GaussianPrivacyEvent(1.0, sample_size=4, population_size=20), 30)
    independent = RdpAccountant()
    independent.compose(dp_accounting.PoissonSampledDpEvent(4 / 20, dp_accounting.GaussianDpEvent(1.0)), 30)
    assert amplified.get_privacy_spent().epsilon == pytest.approx(independent.get_epsilon(1e-5), rel=0.01)
    assert amplified.get_privacy_spent().epsilon < plain.get_privacy_spent().epsilon / 3  # q = 0.2 amplifies


def test_poisson_sampling_draws_each_hospital_with_probability_m_over_n():
    from fedmm.strategies.roster import sample_hospitals

    draws = [sample_hospitals(10, 3, seed=0, server_round=r, poisson=True) for r in range(1, 4001)]
    assert abs(np.mean([len(d) for d in draws]) - 3) < 0.1 and len({len(d) for d in draws}) > 4  # sizes vary
    assert abs(np.mean([5 in d for d in draws]) - 0.3) < 0.03
    assert draws[0] == sample_hospitals(10, 3, seed=0, server_round=1, poisson=True)  # seeded


def test_poisson_client_dp_charges_every_hospital_each_round_and_noises_an_empty_round(flower_run_identity):
    from flwr.app import ArrayRecord, ConfigRecord

    from fedmm.strategies.base import HospitalFedAvg
    from fedmm.strategies.roster import Roster

    roster = Roster({h: 10 + h for h in range(4)}, clients_per_round=1, seed=0, evaluate_every=1, num_rounds=50,
                    sampling="poisson")
    dp = configured("privacy.client", clipping="server_fixed", noise_multiplier=2.0, clipping_norm=0.5, delta=1e-5)
    strategy = ClientLevelDP(HospitalFedAvg(roster, uniform_weights=True), dp, None, seed=0)
    current = ArrayRecord({"w": _array(np.zeros(20_000))})
    empty = next(r for r in range(1, 51) if not roster.draw(r))
    for server_round in range(1, empty + 1):
        messages = list(strategy.configure_train(server_round, current, ConfigRecord(), grid=None))
        sampled = roster.logs[server_round].asked
        assert len(messages) == len(sampled)
        arrays, _ = strategy.aggregate_train(server_round, [_reply(h, {"w": np.full(20_000, 0.1)}) for h in sampled])
    assert all(accountant.num_releases == empty for accountant in strategy.accounts.accountants.values())
    charged = roster.logs[empty].fields()["client_dp_epsilon"]  # metrics.jsonl: drawn or not, everyone paid
    assert charged == {str(h): strategy.epsilon(h) for h in range(4)} and len(set(charged.values())) == 1
    noise = arrays["w"].numpy()  # the empty round: the current model (zeros) plus N(0, (zC/m)²)
    assert abs(noise.std() - 2.0 * 0.5 / 1) < 0.02 and abs(noise.mean()) < 0.02


@pytest.mark.parametrize("overrides, message", [
    (["federation.sampling=bernoulli"], "federation.sampling='bernoulli' is unknown"),
    (["privacy=client_fixed", "strategy.modality_aware=false", "privacy.client.clipping=server_adaptive",
      "federation.sampling=poisson"],
     "implemented for fixed clipping"),
])
def test_impossible_hospital_sampling_names_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(user_config(*overrides))


def test_rdp_orders_past_63_tighten_a_small_epsilon_and_leave_a_typical_one_as_opacus_gives_it():
    from opacus.accountants import RDPAccountant

    def opacus_default(steps: SampledGaussianSteps, delta: float) -> float:
        accountant = RDPAccountant()
        accountant.history = [(steps.noise_multiplier, steps.sample_rate, steps.steps)]
        return accountant.get_epsilon(delta=delta)  # Opacus' own orders, up to 63

    small = SampledGaussianSteps(noise_multiplier=50.0, sample_rate=0.01, steps=10)  # best order: past 63
    assert epsilon_spent((small,), 1e-5) < 0.5 * opacus_default(small, 1e-5)
    typical = SampledGaussianSteps(noise_multiplier=1.0, sample_rate=64 / 1000, steps=300)  # best order below 63
    assert epsilon_spent((typical,), 1e-5) == pytest.approx(opacus_default(typical, 1e-5), rel=1e-12)


def test_client_dp_checkpoints_its_accountants_and_server_momentum_and_a_restored_run_continues_identically(
    flower_run_identity, tmp_path
):
    from flwr.app import ArrayRecord, ConfigRecord

    from fedmm.aggregation.server_optimizers import MomentumConfig, ServerMomentum
    from fedmm.runs.checkpoint import load_checkpoint, save_checkpoint
    from fedmm.strategies.base import HospitalFedAvg
    from fedmm.strategies.roster import Roster

    dp = configured("privacy.client", clipping="server_fixed", noise_multiplier=1.0, clipping_norm=0.5, delta=1e-5)
    key = "image_head.0.weight"

    def fresh() -> ClientLevelDP:
        roster = Roster({h: 10 for h in range(3)}, clients_per_round=3, seed=0, evaluate_every=1, num_rounds=3)
        return ClientLevelDP(HospitalFedAvg(roster, uniform_weights=True), dp,
                             ServerMomentum(MomentumConfig(lr=1.0, momentum=0.9)), seed=0)

    def play(strategy: ClientLevelDP, server_round: int, current: ArrayRecord) -> ArrayRecord:
        list(strategy.configure_train(server_round, current, ConfigRecord(), grid=None))
        replies = [_reply(h, {key: current[key].numpy() + 0.1 * (h + 1)}) for h in range(3)]
        return strategy.aggregate_train(server_round, replies)[0]

    whole = fresh()
    arrays = ArrayRecord({key: _array(np.zeros(64))})
    for server_round in (1, 2):
        arrays = play(whole, server_round, arrays)
    save_checkpoint(tmp_path, whole.checkpoint(2, arrays))
    resumed = fresh()
    resumed.restore(load_checkpoint(tmp_path))
    assert [resumed.epsilon(h) for h in range(3)] == [whole.epsilon(h) for h in range(3)] and whole.epsilon(0) > 0
    assert np.array_equal(resumed.server_optimizer.velocity[key], whole.server_optimizer.velocity[key])
    assert np.array_equal(play(resumed, 3, arrays)[key].numpy(), play(whole, 3, arrays)[key].numpy())
