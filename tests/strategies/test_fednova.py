"""FedNova by hand: updates normalized by local steps; equal steps give FedAvg exactly."""

import numpy as np
import pytest
from helpers import reply, state, strategy

from fedmm import protocol as keys
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.fednova import FedNova
from fedmm.strategies.roster import RoundLog

pytestmark = pytest.mark.usefixtures("flower_run_identity")
CURRENT = state([0.0, 0.0], [0.0], 1.0)


def aggregate(cls, replies, modality_aware=False):
    server = strategy(cls, num_hospitals=len(replies), modality_aware=modality_aware)
    server.roster.logs[1] = RoundLog(sampled=list(range(len(replies))))
    server.current_arrays = reply(0, CURRENT, 1, 1, 1, 1).content[keys.ARRAYS]
    return {key: value.numpy() for key, value in server.aggregate_train(1, replies)[0].items()}


def with_steps(message, steps):
    message.content[keys.METRICS][keys.TRAIN_STEPS] = steps
    return message


def test_hospitals_with_different_step_counts_by_hand():
    # Hospital 0: 10 studies, 2 steps, moved +4; hospital 1: 30 studies, 6 steps, moved +6.
    replies = [with_steps(reply(0, state([4, 4], [4], 5.0), 10, 10, 10, 10), 2),
               with_steps(reply(1, state([6, 6], [6], 7.0), 30, 30, 30, 30), 6)]
    new = aggregate(FedNova, replies)
    # p = (1/4, 3/4); d = (4/2, 6/6) = (2, 1); τ_eff = 2/4 + 18/4 = 5; x + 5 (2/4 + 3/4) = 6.25
    assert new["image_head.0.weight"].tolist() == [6.25, 6.25]
    assert new["logit_scale"] == 1 + 5 * (4 / 2 / 4 + 6 / 6 * 3 / 4)
    fedavg = aggregate(HospitalFedAvg, [reply(0, state([4, 4], [4], 5.0), 10, 10, 10, 10),
                                        reply(1, state([6, 6], [6], 7.0), 30, 30, 30, 30)])
    assert fedavg["image_head.0.weight"].tolist() == [5.5, 5.5]  # FedAvg leans further toward the busy hospital


def test_equal_steps_are_fedavg():
    replies = lambda: [with_steps(reply(h, state([h, 2 * h], [h], 1.0 + h), 10 * (h + 1), 5, 5, 5), 4)  # noqa: E731
                       for h in range(3)]
    nova, fedavg = aggregate(FedNova, replies()), aggregate(HospitalFedAvg, replies())
    for key in CURRENT:
        np.testing.assert_allclose(nova[key], fedavg[key], rtol=1e-6)


def test_modality_aware_form_normalizes_each_head_over_its_hospitals():
    # Hospital 1 trained only the image head (no reports, no pairs); a hospital with no step counts for nothing.
    replies = [with_steps(reply(0, state([4, 4], [4], 5.0), 10, 10, 10, 10), 2),
               with_steps(reply(1, state([6, 6], [0], 1.0), 30, 0, 30, 0), 6),
               with_steps(reply(2, state([9, 9], [9], 9.0), 50, 0, 0, 0), 0)]
    new = aggregate(FedNova, replies, modality_aware=True)
    assert new["image_head.0.weight"].tolist() == [6.25, 6.25]
    assert new["report_head.0.weight"].tolist() == [4.0] and new["logit_scale"] == 5.0  # hospital 0 alone
