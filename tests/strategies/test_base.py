"""Aggregation math with hand-computed expectations, and the Flower strategies that use it."""

import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from helpers import reply, state, strategy

from fedmm import protocol as keys
from fedmm.aggregation.modality import modality_weighted_average, weighted_average
from fedmm.models.heads import HeadGroup
from fedmm.strategies.base import HospitalFedAvg
from fedmm.strategies.roster import HospitalsLost, RoundLog, sample_hospitals

pytestmark = pytest.mark.usefixtures("flower_run_identity")  # the tests build Flower Messages


def test_weighted_average_is_fedavg():
    averaged = weighted_average([state([1, 2], [0], 1.0), state([3, 4], [8], 5.0)], [1, 3])
    # (1*1 + 3*3) / 4 = 2.5, (1*2 + 3*4) / 4 = 3.5, (0 + 24) / 4 = 6, (1 + 15) / 4 = 4
    np.testing.assert_array_equal(averaged["image_head.0.weight"], [2.5, 3.5])
    np.testing.assert_array_equal(averaged["report_head.0.weight"], [6.0])
    assert averaged["logit_scale"] == 4.0 and averaged["logit_scale"].shape == ()


def test_modality_weighted_average_ignores_heads_a_hospital_did_not_train():
    current = state([0, 0], [10], 1.0)
    paired = state([2, 2], [4], 3.0)  # used 2 pairs: trained everything
    image_only = state([6, 10], [999], 999.0)  # used 6 images, no reports, no pairs
    counts = [{HeadGroup.IMAGE: 2, HeadGroup.REPORT: 2, HeadGroup.TEMPERATURE: 2},
              {HeadGroup.IMAGE: 6, HeadGroup.REPORT: 0, HeadGroup.TEMPERATURE: 0}]
    averaged = modality_weighted_average(current, [paired, image_only], counts)
    # image head: (2*2 + 6*6) / 8 = 5 and (2*2 + 6*10) / 8 = 8; report head and scale: the paired hospital alone
    np.testing.assert_array_equal(averaged["image_head.0.weight"], [5.0, 8.0])
    np.testing.assert_array_equal(averaged["report_head.0.weight"], [4.0])
    assert averaged["logit_scale"] == 3.0


def test_head_that_no_sampled_hospital_trained_keeps_its_global_value():
    current = state([1, 1], [10], 2.0)
    counts = [{HeadGroup.IMAGE: 5, HeadGroup.REPORT: 0, HeadGroup.TEMPERATURE: 0},
              {HeadGroup.IMAGE: 15, HeadGroup.REPORT: 0, HeadGroup.TEMPERATURE: 0}]
    averaged = modality_weighted_average(current, [state([4, 0], [7], 9.0), state([8, 4], [3], 9.0)], counts)
    np.testing.assert_array_equal(averaged["image_head.0.weight"], [7.0, 3.0])  # (5*4 + 15*8)/20, (0 + 60)/20
    np.testing.assert_array_equal(averaged["report_head.0.weight"], [10.0])
    assert averaged["logit_scale"] == 2.0


@pytest.mark.parametrize("modality_aware", [False, True])
def test_flower_strategies_aggregate_exactly_and_independently_of_reply_order(modality_aware):
    replies = [
        reply(0, state([2, 2], [4], 3.0), num_examples=10, paired=2, images=2, reports=2),
        reply(1, state([6, 10], [999], 999.0), num_examples=30, paired=0, images=6, reports=0),
        reply(2, state([0, 0], [1], 1.0), num_examples=20, paired=0, images=0, reports=4),
    ]
    results = []
    for order in ([0, 1, 2], [2, 0, 1]):
        built = strategy(modality_aware=modality_aware)
        built.roster.logs[1] = RoundLog(sampled=[0, 1, 2])
        built.current_arrays = ArrayRecord({k: Array(v) for k, v in state([0, 0], [10], 1.0).items()})
        arrays, metrics = built.aggregate_train(1, [replies[i] for i in order])
        results.append({k: v.numpy() for k, v in arrays.items()})
        assert metrics[keys.NUM_IMAGE_USED] == 8 and metrics[keys.TRAIN_LOSS] == 1.0
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key])
    averaged = results[0]
    if not modality_aware:  # weights 10, 30, 20 (training-set sizes), whatever was trained
        np.testing.assert_allclose(averaged["image_head.0.weight"], [(20 + 180 + 0) / 60, (20 + 300) / 60], rtol=1e-6)
        np.testing.assert_allclose(averaged["report_head.0.weight"], [(40 + 29970 + 20) / 60], rtol=1e-6)
    else:  # image: 2 and 6 images; report: 2 and 4 reports; scale: the 2 pairs of hospital 0
        np.testing.assert_allclose(averaged["image_head.0.weight"], [(4 + 36) / 8, (4 + 60) / 8], rtol=1e-6)
        np.testing.assert_allclose(averaged["report_head.0.weight"], [(2 * 4 + 4 * 1) / 6], rtol=1e-6)
        assert averaged["logit_scale"] == pytest.approx(3.0)


@pytest.mark.parametrize("modality_aware", [False, True])
def test_replies_added_on_arrival_give_the_same_average_and_are_not_kept(modality_aware):
    def replies():
        return [reply(0, state([2, 2], [4], 3.0), num_examples=10, paired=2, images=2, reports=2),
                reply(1, state([6, 10], [999], 999.0), num_examples=30, paired=0, images=6, reports=0),
                reply(2, state([0, 0], [1], 1.0), num_examples=20, paired=0, images=0, reports=4),
                reply(3, state([1, 7], [3], 2.0), num_examples=5, paired=1, images=1, reports=1)]

    def run(folding: bool, arrival: list[int]):
        built = strategy(modality_aware=modality_aware, num_hospitals=4)
        built.folds_on_arrival = folding
        built.configure_train(1, ArrayRecord({k: Array(v) for k, v in state([0, 0], [10], 1.0).items()}),
                              ConfigRecord(), grid=None)
        arrived = [built.on_reply(replies()[i]) for i in arrival]
        held = [len(r.content[keys.ARRAYS]) for r in arrived]
        arrays, _ = built.aggregate_train(1, arrived)
        return {k: v.numpy() for k, v in arrays.items()}, held, built.roster.logs[1].train

    expected, held, log = run(False, [0, 1, 2, 3])
    assert held == [3, 3, 3, 3]  # without folding every reply keeps its arrays until the round ends
    for arrival in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        averaged, held, folded_log = run(True, arrival)
        assert held == [0, 0, 0, 0]  # each was added and dropped (the last ones at the round's end)
        for key in expected:  # the sum runs in hospital order whatever the arrival order: the same bits
            np.testing.assert_array_equal(averaged[key], expected[key])
        assert {h: m[keys.UPLOAD_BYTES] for h, m in folded_log.items()} == \
               {h: m[keys.UPLOAD_BYTES] for h, m in log.items()}


def test_a_reply_waits_only_for_the_hospitals_before_it():
    from fedmm.aggregation.modality import SIZE, RunningAverage
    from fedmm.strategies.base import InOrderFold

    added = []
    fold = InOrderFold([0, 1, 2, 3], RunningAverage(state([0, 0], [0], 0.0), SIZE), lambda r: added.append(
        r.content[keys.METRICS][keys.HOSPITAL_ID]))
    for hospital in (1, 3, 0):
        fold.offer(reply(hospital, state([1, 1], [1], 1.0), 1, 1, 1, 1))
    assert added == [0, 1]  # 3 waits for 2
    fold.finish()  # 2 never answered
    assert added == [0, 1, 3] and not fold.waiting


def test_client_level_dp_average_has_a_fixed_denominator():
    from fedmm.aggregation.modality import UNIFORM, RunningAverage

    average = RunningAverage(state([1, 1], [0], 1.0), UNIFORM, planned=4)
    average.add(state([3, 1], [4], 1.0))
    average.add(state([1, 5], [0], 3.0))
    averaged = average.result()  # current + (sum of the 2 updates) / 4 planned, not / 2 received
    np.testing.assert_array_equal(averaged["image_head.0.weight"], [1.5, 2.0])
    np.testing.assert_array_equal(averaged["report_head.0.weight"], [1.0])
    assert averaged["logit_scale"] == 1.5


def test_failed_hospital_stops_the_run_by_default_with_its_reason():
    built = strategy(HospitalFedAvg, num_hospitals=2)
    built.roster.logs[1] = RoundLog(sampled=[0, 1])
    sent = Message(RecordDict(), dst_node_id=101, message_type="train")
    failed = Message(
        Error(code=0, reason="Node Unavailable"), reply_to=sent
    )  # as the SuperLink answers for a dead node
    with pytest.raises(
        HospitalsLost,
        match=r"hospital\(s\) \[1\] failed \(Node Unavailable\); 1 of 2 remain, fewer "
        r"than federation.min_hospitals=2",
    ):
        built.aggregate_train(1, [reply(0, state([1, 1], [1], 1.0), 5, 5, 5, 5), failed])


def test_a_silent_hospital_counts_as_failed_after_the_round_timeout():
    built = strategy(HospitalFedAvg, num_hospitals=2, round_timeout_s=30)
    built.roster.logs[1] = RoundLog(sampled=[0, 1])
    with pytest.raises(HospitalsLost, match=r"no reply within federation.round_timeout_s=30"):
        built.aggregate_train(1, [reply(0, state([1, 1], [1], 1.0), 5, 5, 5, 5)])


def test_a_round_without_evaluation_asks_no_hospital_and_loses_none():
    built = strategy(HospitalFedAvg, num_hospitals=2)
    built.roster.evaluate_every, built.roster.num_rounds = 2, 4
    arrays = ArrayRecord({k: Array(v) for k, v in state([0, 0], [0], 1.0).items()})
    for server_round, asked in ((1, []), (2, [100, 101]), (3, [])):
        built.roster.logs[server_round] = RoundLog(sampled=[0, 1])
        sent = list(built.configure_evaluate(server_round, arrays, ConfigRecord(), None))
        assert [m.metadata.dst_node_id for m in sent] == asked
        replies = [
            Message(
                RecordDict({keys.METRICS: MetricRecord({keys.HOSPITAL_ID: h})}), dst_node_id=0, message_type="evaluate"
            )
            for h in range(len(asked))
        ]
        built.aggregate_evaluate(server_round, replies)  # Flower calls it with no replies when nobody was asked
    assert built.roster.lost == {} and built.roster.stop is None


def test_the_run_goes_on_without_a_failed_hospital_while_enough_remain():
    built = strategy(HospitalFedAvg, num_hospitals=3, min_hospitals=2)
    built.roster.logs[1] = RoundLog(sampled=[0, 1, 2])
    built.current_arrays = ArrayRecord({k: Array(v) for k, v in state([0, 0], [0], 1.0).items()})
    arrays, _ = built.aggregate_train(
        1, [reply(0, state([2, 2], [2], 1.0), 10, 1, 1, 1), reply(2, state([4, 4], [4], 1.0), 30, 1, 1, 1)]
    )
    np.testing.assert_allclose(arrays["image_head.0.weight"].numpy(), [3.5, 3.5])  # (10*2 + 30*4) / 40: without 1
    assert set(built.roster.lost) == {1} and "no reply" in built.roster.lost[1]
    assert all(1 not in built.roster.draw(r) for r in range(2, 10))  # never sampled again
    assert [
        m.metadata.dst_node_id for m in built.configure_evaluate(1, built.current_arrays, ConfigRecord(), None)
    ] == [100, 102]
    # An evaluation failure that leaves too few: this round is recorded, the next one stops.
    built.aggregate_evaluate(
        1,
        [
            Message(
                RecordDict({keys.METRICS: MetricRecord({keys.HOSPITAL_ID: 0})}), dst_node_id=0, message_type="evaluate"
            )
        ],
    )
    assert list(built.roster.logs[1].evaluate) == [0]
    with pytest.raises(HospitalsLost, match=r"round 1, evaluation: hospital\(s\) \[2\] failed"):
        built.configure_train(2, built.current_arrays, ConfigRecord(), None)


def test_sampling_is_seeded_by_round_and_independent_of_node_ids():
    first = [sample_hospitals(10, 3, seed=7, server_round=r) for r in range(1, 6)]
    assert first == [sample_hospitals(10, 3, seed=7, server_round=r) for r in range(1, 6)]
    assert all(len(set(s)) == 3 and s == sorted(s) for s in first)
    assert len({tuple(s) for s in first}) > 1  # rounds differ
    assert first != [sample_hospitals(10, 3, seed=8, server_round=r) for r in range(1, 6)]
    random.seed(0)  # the global RNG plays no part
    assert first[0] == sample_hospitals(10, 3, seed=7, server_round=1)
