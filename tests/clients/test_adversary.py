"""Faulty and malicious hospitals: what each kind sends, who is drawn for a fraction, and bad settings."""

import dataclasses
import json

import pytest
import torch
from helpers import heads, make_audit_mod, tiny_split, user_config

from fedmm.clients.adversary import Adversary, resolve_adversaries
from fedmm.config import AdversaryConfig, ConfigError
from fedmm.training.updates import snapshot
from fedmm.validation import validate_config

RECEIVED, TRAINED, INITIAL = snapshot(heads(1)), snapshot(heads(2)), snapshot(heads(3))


def sent(kind: str, scale: float = 5.0, seed: int = 0):
    return Adversary(0, kind, scale).corrupt(TRAINED, RECEIVED, INITIAL, seed)


def test_each_kind_sends_what_it_says():
    for key in RECEIVED:
        update = TRAINED[key] - RECEIVED[key]
        torch.testing.assert_close(sent("sign_flip")[key], RECEIVED[key] - 5 * update)
        torch.testing.assert_close(sent("scale")[key], RECEIVED[key] + 5 * update)
        assert torch.equal(sent("stale")[key], INITIAL[key])
        assert torch.equal(sent("shuffled_pairs")[key], TRAINED[key])
    noise = torch.cat([value.flatten() for value in sent("noise", scale=2.0).values()])
    assert noise.std().item() == pytest.approx(2.0, rel=0.05) and abs(noise.mean().item()) < 0.05
    assert all(torch.equal(sent("noise", seed=3)[k], sent("noise", seed=3)[k]) for k in RECEIVED)  # seeded
    assert not torch.equal(sent("noise", seed=3)["logit_scale"], sent("noise", seed=4)["logit_scale"])


def test_shuffled_pairs_mismatch_the_reports_of_the_pairs_only():
    data = tiny_split(24)
    shuffled = Adversary(0, "shuffled_pairs", 1.0).training_data(data, seed=0)
    assert torch.equal(shuffled.image_features, data.image_features)
    assert not torch.equal(shuffled.report_features, data.report_features)
    assert sorted(shuffled.report_features[:, 0].tolist()) == sorted(data.report_features[:, 0].tolist())
    assert Adversary(0, "sign_flip", 1.0).training_data(data, 0) is data


def scenario(*entries: AdversaryConfig, hospitals: int = 8):
    return dataclasses.replace(user_config("scenario=balanced").scenario, num_hospitals=hospitals,
                               adversaries=tuple(entries))


def test_a_fraction_is_drawn_from_the_seed_and_never_repeats_a_named_hospital():
    chosen = resolve_adversaries(scenario(AdversaryConfig("noise", hospital=3),
                                          AdversaryConfig("sign_flip", fraction=0.25)), seed=0)
    assert chosen[3].kind == "noise" and sorted(h for h, a in chosen.items() if a.kind == "sign_flip") != [3]
    assert len(chosen) == 3 and chosen == resolve_adversaries(scenario(AdversaryConfig("noise", hospital=3),
                                                                       AdversaryConfig("sign_flip", fraction=0.25)), 0)
    draws = {tuple(sorted(resolve_adversaries(scenario(AdversaryConfig("stale", fraction=0.25)), s))) for s in range(8)}
    assert len(draws) > 1  # other seeds, other hospitals


@pytest.mark.parametrize("overrides, message", [
    (["scenario.adversaries=[{hospital: 9, kind: noise}]"], r"scenario.adversaries\[0\].hospital=9 is not a hospital"),
    (["scenario.adversaries=[{kind: noise}]"], "needs exactly one of `hospital`"),
    (["scenario.adversaries=[{hospital: 1, kind: flood}]"], "kind='flood' is unknown; valid:"),
    (["scenario.adversaries=[{hospital: 1, kind: noise}, {hospital: 1, kind: stale}]"], "named twice"),
    (["scenario.adversaries=[{hospital: 1, kind: noise}]", "strategy=feddistill"], "exchanges no weights"),
    (["scenario.adversaries=[{hospital: 1, kind: noise}]", "strategy=centralized"], "runs without a federation"),
])
def test_impossible_adversaries_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(user_config(*overrides))


@pytest.mark.slow
def test_a_stale_hospital_sends_the_initial_heads_through_the_simulation(smoke_overrides, tmp_path):
    from fedmm.compose import compose_config
    from fedmm.experiment import run_experiment

    audit = tmp_path / "audit"
    audit.mkdir()
    cfg = compose_config([*smoke_overrides, "scenario.adversaries=[{hospital: 0, kind: stale}]",
                          f"run_dir={tmp_path / 'run'}"])
    summary = run_experiment(cfg, client_mods=[make_audit_mod(audit)])
    train = sorted((e for e in (json.loads(p.read_text()) for p in audit.glob("*.json")) if e["type"] == "train"),
                   key=lambda e: (e["hospital"], e["round"]))
    initial = train[0]["received"]  # round 1: every hospital received the initial heads
    stale = [e for e in train if e["hospital"] == 0]
    honest = [e for e in train if e["hospital"] == 2]
    assert all(list(e["reply_arrays"].values()) == initial for e in stale)  # both rounds, whatever it received
    assert stale[1]["received"] != initial  # round 2 brought a new global model
    assert list(honest[1]["reply_arrays"].values()) != initial
    assert summary["adversaries"] == {"0": "stale x1"}
