"""Secure aggregation (SecAgg+ through `fedmm.strategies.secagg`): the arithmetic by hand, then whole runs
whose replies are audited, compared with plain averaging, and with hospitals that die mid-protocol."""

import json

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from safetensors.numpy import load_file

from fedmm.aggregation.modality import MODALITY, SIZE, RunningAverage
from fedmm.aggregation.secure import SecureSum, average_error_bound, hospital_vector
from fedmm.config import ConfigError
from fedmm.models.heads import HeadGroup
from fedmm.runs.recorder import read_metric_lines
from fedmm.strategies.secagg import shares_and_threshold
from fedmm.validation import validate_config
from tests.helpers import make_audit_mod, state, user_config

CURRENT = state([1.0, 2.0], [0.5], 3.0)
STATES = [state([2.0, 1.0], [0.5], 3.5), state([0.0, 4.0], [1.5], 2.0), state([1.0, 2.0], [0.0], 3.0)]
COUNTS = [{HeadGroup.IMAGE: 10, HeadGroup.REPORT: 10, HeadGroup.TEMPERATURE: 10},
          {HeadGroup.IMAGE: 30, HeadGroup.REPORT: 0, HeadGroup.TEMPERATURE: 0},  # image-only
          {HeadGroup.IMAGE: 0, HeadGroup.REPORT: 20, HeadGroup.TEMPERATURE: 0}]  # report-only


@pytest.mark.parametrize("mode", [SIZE, MODALITY])
def test_the_sum_of_the_hospitals_vectors_reads_as_their_weighted_mean(mode):
    sizes = [10, 30, 20]
    plain = RunningAverage(CURRENT, mode)
    summed = None
    for hospital_state, size, counts in zip(STATES, sizes, COUNTS):
        plain.add(hospital_state, size, counts)
        weights = counts if mode == MODALITY else dict.fromkeys(HeadGroup, size)
        vector = hospital_vector(hospital_state, CURRENT, weights, max_weight=100.0)
        summed = vector if summed is None else [a + b for a, b in zip(summed, vector)]
    secure = SecureSum(CURRENT, summed, added=3, max_weight=100.0)
    for key, value in plain.result().items():
        np.testing.assert_allclose(secure.result()[key], value, rtol=1e-6)
    assert secure.trained() == plain.trained()


def test_a_group_nobody_trained_keeps_its_value():
    weights = {HeadGroup.IMAGE: 30}
    secure = SecureSum(CURRENT, hospital_vector(STATES[1], CURRENT, weights, 100.0), added=1, max_weight=100.0)
    assert secure.trained() == {HeadGroup.IMAGE}
    np.testing.assert_array_equal(secure.result()["report_head.0.weight"], CURRENT["report_head.0.weight"])
    np.testing.assert_allclose(secure.result()["image_head.0.weight"], STATES[1]["image_head.0.weight"])


def test_shares_and_threshold_follow_flowers_workflow():
    config = user_config("secagg.enabled=true").secagg
    assert shares_and_threshold(config, 6) == (6, 3)
    assert shares_and_threshold(config, 50) == (50, 25)
    sparse = user_config("secagg.enabled=true", "secagg.num_shares=5", "secagg.threshold=3").secagg
    assert shares_and_threshold(sparse, 50) == (5, 3)


@pytest.mark.parametrize("overrides, message", [
    (["strategy=scaffold"], "needs more than their sum"),
    (["strategy=qffl"], "needs more than their sum"),
    (["aggregator=median"], "which secure aggregation hides"),
    (["privacy=client_fixed", "strategy.modality_aware=false"], "clip at the hospitals with"),
    (["secagg.quantization_range=4294967296"], "quantization_range"),
    (["secagg.quantization_range=2147483648"], "beyond modulus_range"),
])
def test_impossible_secure_aggregation_names_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(user_config("secagg.enabled=true", *overrides))


def die_at(hospitals: set[int], stage: str):
    """A mod: hospitals in `hospitals` fail at `stage` of the protocol, as a node that crashes there."""

    def mod(msg, context, call_next):
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if int(context.node_config["partition-id"]) in hospitals and configs and configs.get(Key.STAGE) == stage:
            raise RuntimeError(f"killed at {stage}")
        return call_next(msg, context)

    return mod


def die_in_training(hospitals: set[int]):
    def mod(msg, context, call_next):
        if int(context.node_config["partition-id"]) in hospitals and msg.metadata.message_type == "train":
            raise RuntimeError("killed")
        return call_next(msg, context)

    return mod


def run(smoke_overrides, run_dir, *overrides, mods=()):
    from fedmm.compose import compose_config
    from fedmm.experiment import run_experiment

    cfg = compose_config([*smoke_overrides, "federation.rounds=1", f"run_dir={run_dir}", *overrides])
    summary = run_experiment(cfg, client_mods=list(mods))
    lines = read_metric_lines(run_dir)
    return cfg, summary, lines, load_file(run_dir / "heads.safetensors")


def total_weights(line: dict) -> float:
    """The smallest summed weight of a head group (in units of max_weight=1000) of a plain run's round."""
    train = line["train"].values()
    return min(sum(m[key] for m in train) for key in ("num-image-used", "num-report-used", "num-paired-used")) / 1000


@pytest.mark.slow
def test_the_server_sees_only_masked_vectors_and_their_sum_is_the_plain_average(smoke_overrides, tmp_path):
    audit = tmp_path / "audit"
    audit.mkdir()
    _, _, plain_lines, plain = run(smoke_overrides, tmp_path / "plain")
    cfg, _, lines, secure = run(smoke_overrides, tmp_path / "secure", "secagg.enabled=true",
                                mods=[make_audit_mod(audit)])
    entries = [json.loads(path.read_text()) for path in audit.glob("*.json") if "train" in path.read_text()]
    training = [e for e in entries if e["type"] == "train"]
    stages = sorted(e["secagg_stage"] for e in training)
    assert stages == sorted([Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK] * 3)
    assert all(not e["reply_arrays"] for e in training)  # no array leaves a hospital in any stage
    collect = [e for e in training if e["secagg_stage"] == Stage.COLLECT_MASKED_VECTORS]
    assert all(e["received"] and set(e["reply_records"]) == {"metrics", RECORD_KEY_CONFIGS} for e in collect)
    kept = {"hospital-id", "upload-bytes", "download-bytes"}  # no counts, no loss
    assert all(set(metrics) <= kept for metrics in lines[0]["train"].values())
    bound = average_error_bound(3, cfg.secagg.clipping_range, cfg.secagg.quantization_range,
                                total_weights(plain_lines[0]))
    for key, value in plain.items():
        assert np.abs(secure[key] - value).max() <= bound, key
    assert any(not np.array_equal(secure[key], plain[key]) for key in plain)  # quantized, not the plain path


def test_the_masked_vectors_look_nothing_like_the_update(flower_run_identity):
    # One hospital's masked vector is its quantized vector plus uniform masks mod 2^32: its entries spread over
    # the whole range whatever the update (here: zero, which quantizes to the middle of the range).
    from flwr.client.mod.secure_aggregation.secaggplus_mod import (
        SecAggPlusState,
        _collect_masked_vectors,
        _setup,
        _share_keys,
    )
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters

    states = {nid: SecAggPlusState() for nid in (1, 2, 3)}
    setup = {Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2, Key.CLIPPING_RANGE: 8.0,
             Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0}
    keys = {}
    for nid, hospital in states.items():
        hospital.nid = nid
        reply = _setup(hospital, dict(setup))
        keys[str(nid)] = [reply[Key.PUBLIC_KEY_1], reply[Key.PUBLIC_KEY_2]]
    shares = {nid: _share_keys(hospital, dict(keys)) for nid, hospital in states.items()}
    forwarded = {nid: ([src for src, r in shares.items() if nid in r[Key.DESTINATION_LIST]],
                       [r[Key.CIPHERTEXT_LIST][r[Key.DESTINATION_LIST].index(nid)]
                        for src, r in shares.items() if nid in r[Key.DESTINATION_LIST]]) for nid in states}
    sources, ciphertexts = forwarded[1]
    zero = [np.zeros(5000)]
    reply = _collect_masked_vectors(states[1], {Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: sources},
                                    1000.0, ndarrays_to_parameters(zero))
    vector = bytes_to_ndarray(reply[Key.MASKED_PARAMETERS][1])
    assert vector.min() < 2**29 and vector.max() > 2**32 - 2**29  # uniform over [0, 2^32), not near 2^21
    assert abs(vector.mean() / 2**31 - 1) < 0.05


@pytest.mark.slow
def test_a_hospital_that_dies_after_sharing_its_keys_is_unmasked_from_its_shares(smoke_overrides, tmp_path):
    _, _, plain_lines, plain = run(smoke_overrides, tmp_path / "plain", "federation.min_hospitals=2",
                                   mods=[die_in_training({2})])
    cfg, summary, lines, secure = run(smoke_overrides, tmp_path / "secure", "secagg.enabled=true",
                                      "federation.min_hospitals=2", mods=[die_at({2}, Stage.COLLECT_MASKED_VECTORS)])
    assert set(summary["lost_hospitals"]) == {"2"} and "skipped" not in lines[0]
    bound = average_error_bound(2, cfg.secagg.clipping_range, cfg.secagg.quantization_range,
                                total_weights(plain_lines[0]))
    for key, value in plain.items():  # hospitals 0 and 1 only, the dead one's masks removed
        assert np.abs(secure[key] - value).max() <= bound, key


@pytest.mark.slow
def test_a_round_short_of_the_threshold_is_skipped_and_says_why(smoke_overrides, tmp_path):
    from fedmm.compose import compose_config
    from fedmm.models.heads import build_heads
    from fedmm.seeding import HEADS_INIT_STREAM, derive_seed

    cfg, _, lines, secure = run(smoke_overrides, tmp_path, "secagg.enabled=true", "federation.min_hospitals=1",
                                mods=[die_at({1, 2}, Stage.SHARE_KEYS)])
    assert "fewer than 2 live neighbours" in lines[0]["skipped"]
    initial = build_heads(secure["image_head.1.weight"].shape[1], secure["report_head.1.weight"].shape[1],
                          compose_config(["+experiment=smoke"]).heads, derive_seed(cfg.seed, HEADS_INIT_STREAM))
    for key, value in initial.state_dict().items():  # the global model stayed as it was
        np.testing.assert_array_equal(secure[key], value.numpy())


@pytest.mark.slow
def test_with_client_level_dp_the_noise_goes_on_the_secure_sum_of_clipped_updates(smoke_overrides, tmp_path):
    dp = ["privacy=client_fixed", "privacy.client.clipping=client_fixed", "strategy.modality_aware=false",
          "privacy.client.noise_multiplier=1e-6", "privacy.client.clipping_norm=0.05"]  # clipping binds
    _, plain_summary, _, plain = run(smoke_overrides, tmp_path / "plain", *dp)
    cfg, summary, lines, secure = run(smoke_overrides, tmp_path / "secure", "secagg.enabled=true", *dp)
    # Flower's client-side clipping and fixed-denominator average, against clip-then-mask and noise on the sum.
    bound = average_error_bound(3, cfg.secagg.clipping_range, cfg.secagg.quantization_range, total_weight=3)
    for key, value in plain.items():
        assert np.abs(secure[key] - value).max() <= bound + 1e-5, key  # + the noise (std z·C/m ≈ 2e-8)
    assert summary["privacy"]["max_client_dp_epsilon"] == plain_summary["privacy"]["max_client_dp_epsilon"] > 0
    assert all(set(m) <= {"hospital-id", "upload-bytes", "download-bytes", "client-dp-epsilon"}
               for m in lines[0]["train"].values())
