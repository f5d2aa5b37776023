"""q-FFL by hand: Flower's q-FedAvg step, q = 0 is the uniform mean, and the loss reported before training."""

import math

import numpy as np
import pytest
import torch
from helpers import heads, reply, state, strategy, tiny_split, tiny_step

from fedmm import protocol as keys
from fedmm.strategies.qffl import QFedAvg, QFFLOptions, loss_at, qffl_update
from fedmm.strategies.roster import RoundLog
from fedmm.training.updates import snapshot

pytestmark = pytest.mark.usefixtures("flower_run_identity")
CURRENT = state([0.0, 0.0], [0.0], 1.0)


def aggregate(q, replies, losses, modality_aware=False, lr=0.5):
    server = strategy(QFedAvg, num_hospitals=len(replies), options=QFFLOptions(q=q, client_learning_rate=lr),
                      modality_aware=modality_aware)
    server.roster.logs[1] = RoundLog(sampled=list(range(len(replies))))
    server.current_arrays = reply(0, CURRENT, 1, 1, 1, 1).content[keys.ARRAYS]
    for message, loss in zip(replies, losses):
        message.content[keys.METRICS][keys.LOSS_AT_GLOBAL] = loss
    return {key: value.numpy() for key, value in server.aggregate_train(1, replies)[0].items()}


def two_replies():
    return [reply(0, state([1, 2], [3], 2.0), 10, 10, 10, 10), reply(1, state([3, 0], [1], 0.0), 90, 90, 90, 90)]


def test_q_zero_is_the_uniform_mean():
    new = aggregate(0.0, two_replies(), [1.0, 4.0])
    assert new["image_head.0.weight"].tolist() == [2, 1] and new["report_head.0.weight"].tolist() == [2]


def test_q_one_by_hand():
    L = 2.0  # 1 / client_learning_rate
    new = aggregate(1.0, two_replies(), [1.0, 4.0])
    # Δw_k = L (x - y_k); ||Δw_0||² = 4 (1 + 4 + 9 + 1) = 60; ||Δw_1||² = 4 (9 + 0 + 1 + 1) = 44
    h = [1 * 1.0**0 * 60 + L * 1.0, 1 * 4.0**0 * 44 + L * 4.0]  # h_k = q F_k^{q-1} ||Δw_k||² + L F_k^q
    for key, (y0, y1) in {"image_head.0.weight": ([1, 2], [3, 0]), "logit_scale": (2.0, 0.0)}.items():
        x = np.asarray(CURRENT[key], dtype=np.float64)
        delta = 1.0 * L * (x - np.asarray(y0)) + 4.0 * L * (x - np.asarray(y1))  # F_k^q Δw_k
        np.testing.assert_allclose(new[key], x - delta / sum(h), rtol=1e-6)


def test_the_update_tilts_toward_the_worse_off_hospital_as_q_grows():
    # Hospital 0 (loss 4) moved to (1, 2), hospital 1 (loss 1) to (3, 0): the step is ∝ Σ F_k^q (y_k - x), so
    # second / first coordinate = 2 F_0^q / (F_0^q + 3 F_1^q): 0.5 at q = 0, rising toward 2 (hospital 0 alone).
    for q in (0.0, 1.0, 5.0):
        new = aggregate(q, two_replies(), [4.0, 1.0])["image_head.0.weight"]
        assert new[1] / new[0] == pytest.approx(2 * 4.0**q / (4.0**q + 3), rel=1e-5)


def test_modality_aware_form_leaves_hospitals_out_of_heads_they_did_not_train():
    replies = [reply(0, state([1, 2], [3], 2.0), 10, 10, 10, 10), reply(1, state([3, 0], [0], 1.0), 90, 0, 90, 0)]
    replies[1].content[keys.METRICS][keys.TRAIN_STEPS] = 3  # it trained its image head (missing-modality handler)
    new = aggregate(0.0, replies, [1.0, 4.0], modality_aware=True)
    assert new["report_head.0.weight"].tolist() == [3]  # hospital 0 alone: its y
    assert new["image_head.0.weight"].tolist() == [2, 1]


def test_the_hospital_reports_its_loss_of_the_received_heads_before_training():
    data, received = tiny_split(), snapshot(heads(1))
    expected = loss_at(tiny_step(heads(2), data, 0, "qffl"), received)
    update = qffl_update(tiny_step(heads(3), data, 0, "qffl"), received, None)
    assert update.metrics[keys.LOSS_AT_GLOBAL] == expected and math.isfinite(expected)
    assert update.result.steps > 0 and not torch.equal(update.shared["image_head.1.weight"],
                                                       received["image_head.1.weight"])
    assert math.isnan(loss_at(tiny_step(heads(2), tiny_split(paired=False), 0, "qffl"), received))
