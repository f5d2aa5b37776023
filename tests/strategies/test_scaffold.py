"""SCAFFOLD by hand: two hospitals, two corrected SGD steps each, the control variates and the server step."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from helpers import heads, reply, strategy, tiny_split, tiny_step

from fedmm import protocol as keys
from fedmm.models.losses import symmetric_info_nce
from fedmm.strategies.roster import RoundLog
from fedmm.strategies.scaffold import Scaffold, scaffold_update
from fedmm.training.updates import snapshot

pytestmark = pytest.mark.usefixtures("flower_run_identity")
LR = 0.1
FULL_BATCH = ("train.batch_size=64",)  # one step per epoch: 2 epochs, K = 2 steps on the whole split


def scaled(state, factor):
    return {key: factor * torch.ones_like(value) for key, value in state.items()}


def by_hand(x, data, c, c_i):
    """K = 2 steps y ← y - η (∇L(y) - c_i + c) on the whole split, then c_i⁺ = c_i - c + (x - y)/(K η)."""
    model = heads()
    model.load_state_dict(x)
    for _ in range(2):
        model.zero_grad()
        loss = symmetric_info_nce(model.embed_images(data.image_features), model.embed_reports(data.report_features),
                                  model.scale()).total
        loss.backward()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter -= LR * (parameter.grad - c_i[name] + c[name])
    y = snapshot(model)
    return y, {key: c_i[key] - c[key] + (x[key] - y[key]) / (2 * LR) for key in x}


def test_two_hospitals_two_steps_by_hand():
    x = snapshot(heads(1))
    c = scaled(x, 0.01)  # a nonzero server variate, as after some rounds
    hospitals = [(tiny_split(12), scaled(x, -0.02)), (tiny_split(20), None)]  # hospital 1: first round, c_1 = 0
    server = strategy(Scaffold, num_hospitals=2)
    server.current_arrays = ArrayRecord({key: Array(value.numpy()) for key, value in x.items()})
    server.control_total = {key: 2 * value.numpy().astype(np.float64) for key, value in c.items()}  # N c
    np.testing.assert_array_equal(server.train_extras()[keys.CONTROL_VARIATES]["logit_scale"].numpy(),
                                  c["logit_scale"].numpy())
    server.roster.logs[1] = RoundLog(sampled=[0, 1])
    replies, expected_y, expected_delta = [], [], []
    for hospital, (data, own) in enumerate(hospitals):
        step = tiny_step(heads(5), data, hospital, "scaffold", f"strategy.local_lr={LR}", *FULL_BATCH,
                         server_arrays={keys.CONTROL_VARIATES: c})
        update = scaffold_update(step, x, own)
        y, c_new = by_hand(x, data, c, own if own is not None else scaled(x, 0.0))
        for key in x:
            torch.testing.assert_close(update.shared[key], y[key], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(update.personal[key], c_new[key], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(update.extra[keys.CONTROL_VARIATES][key],
                                       c_new[key] - (own[key] if own is not None else 0), rtol=1e-4, atol=1e-5)
        assert update.result.steps == 2
        expected_y.append(y)
        expected_delta.append(update.extra[keys.CONTROL_VARIATES])
        counts = {key: len(data) for key in (keys.NUM_EXAMPLES, keys.NUM_PAIRED_USED, keys.NUM_IMAGE_USED,
                                             keys.NUM_REPORT_USED)}
        metrics = MetricRecord({keys.HOSPITAL_ID: hospital, keys.TRAIN_STEPS: 2, keys.TRAIN_LOSS: update.result.loss}
                               | counts)
        content = RecordDict({keys.ARRAYS: ArrayRecord(update.shared), keys.METRICS: metrics,
                              keys.CONTROL_VARIATES: ArrayRecord(update.extra[keys.CONTROL_VARIATES])})
        replies.append(Message(content=content, dst_node_id=0, message_type="train"))
    arrays, _ = server.aggregate_train(1, replies)
    for key in x:  # x ← size-weighted mean of the y_i (12 and 20 studies); c ← c + (Δc_0 + Δc_1) / N
        mean = (12 * expected_y[0][key] + 20 * expected_y[1][key]) / 32
        np.testing.assert_allclose(arrays[key].numpy(), mean.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(server.control[key],
                                   (c[key] + (expected_delta[0][key] + expected_delta[1][key]) / 2).numpy(),
                                   rtol=1e-5, atol=1e-7)


def test_an_image_only_hospital_keeps_its_variates_and_its_heads():
    x = snapshot(heads(1))
    c, own = scaled(x, 0.01), scaled(x, 0.03)
    image_only = tiny_split(12, paired=False)  # no pairs and missing=ignore: no step touches any head
    step = tiny_step(heads(5), image_only, 0, "scaffold", f"strategy.local_lr={LR}",
                     server_arrays={keys.CONTROL_VARIATES: c})
    update = scaffold_update(step, x, own)
    assert update.result.steps == 0
    assert all(torch.equal(update.shared[k], x[k]) and torch.equal(update.personal[k], own[k]) for k in x)
    assert all(not update.extra[keys.CONTROL_VARIATES][k].any() for k in x)


def test_a_head_without_gradient_is_neither_corrected_nor_given_a_new_variate():
    x = snapshot(heads(1))
    c, own = scaled(x, 0.01), scaled(x, 0.03)
    data = tiny_split(12)
    step = tiny_step(heads(5), data, 0, "scaffold", f"strategy.local_lr={LR}",
                     server_arrays={keys.CONTROL_VARIATES: c})
    frozen = [name for name in x if name.startswith("report_head.")]
    for name, parameter in step.heads.named_parameters():  # as if no row trained the report head
        parameter.requires_grad_(name not in frozen)
    update = scaffold_update(step, x, own)
    assert update.result.steps > 0
    assert all(torch.equal(update.shared[k], x[k]) and torch.equal(update.personal[k], own[k]) for k in frozen)
    assert not torch.equal(update.personal["image_head.1.weight"], own["image_head.1.weight"])



def test_the_modality_aware_server_variate_averages_over_the_hospitals_that_trained_each_head():
    x = {"image_head.0.weight": np.zeros(2, np.float32), "report_head.0.weight": np.zeros(1, np.float32),
         "logit_scale": np.zeros((), np.float32)}
    server = strategy(Scaffold, num_hospitals=3, modality_aware=True)
    server.current_arrays = ArrayRecord({key: Array(value) for key, value in x.items()})
    server.train_extras()
    server.roster.logs[1] = RoundLog(sampled=[0, 1, 2])
    replies = [reply(0, x, 10, 10, 10, 10), reply(1, x, 10, 0, 10, 0), reply(2, x, 10, 0, 0, 0)]  # 2: trained nothing
    deltas = [{"image_head.0.weight": [1.0, 2.0], "report_head.0.weight": [3.0], "logit_scale": 4.0},
              {"image_head.0.weight": [3.0, 4.0], "report_head.0.weight": [0.0], "logit_scale": 0.0},
              {"image_head.0.weight": [0.0, 0.0], "report_head.0.weight": [0.0], "logit_scale": 0.0}]
    for message, delta in zip(replies, deltas):
        message.content[keys.METRICS][keys.TRAIN_STEPS] = 1
        message.content[keys.CONTROL_VARIATES] = ArrayRecord({k: Array(np.asarray(v, np.float32))
                                                              for k, v in delta.items()})
    server.aggregate_train(1, replies)
    control = server.control
    assert control["image_head.0.weight"].tolist() == [2.0, 3.0]  # over hospitals 0 and 1
    assert control["report_head.0.weight"].tolist() == [3.0] and control["logit_scale"] == 4.0  # hospital 0 alone
