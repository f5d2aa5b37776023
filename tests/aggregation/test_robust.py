"""Robust aggregation: Flower's FedMedian, FedTrimmedAvg, Krum and MultiKrum on the same replies, and the
modality-aware form computed by hand (each head group over the hospitals that trained it)."""

import numpy as np
import pytest
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum, MultiKrum
from helpers import reply, state, strategy, user_config

from fedmm.aggregation.robust import RobustAverage, selected_count
from fedmm.config import AggregatorConfig, ConfigError
from fedmm.models.heads import HeadGroup
from fedmm.strategies.roster import RoundLog
from fedmm.validation import validate_config

pytestmark = pytest.mark.usefixtures("flower_run_identity")

# Five hospitals; the last is an outlier on every array.
TARGETS = [([1, 2], [3], 1.0), ([2, 0], [4], 2.0), ([3, 1], [5], 3.0), ([2, 1], [4], 2.5), ([90, -90], [90], 50.0)]
SIZES = [10, 20, 30, 40, 50]


def replies(counts=None):
    counts = counts or [(n, n, n) for n in SIZES]
    return [reply(h, state(*target), n, *c) for h, (target, n, c) in enumerate(zip(TARGETS, SIZES, counts))]


def ours(aggregator: AggregatorConfig, modality_aware: bool = False, counts=None) -> dict[str, np.ndarray]:
    mine = strategy(num_hospitals=5, aggregator=aggregator, modality_aware=modality_aware)
    mine.roster.logs[1] = RoundLog(sampled=list(range(5)))
    mine.current_arrays = replies()[0].content["arrays"]  # only needed for its keys and dtypes
    arrays, _ = mine.aggregate_train(1, replies(counts))
    return {key: value.numpy() for key, value in arrays.items()}


@pytest.mark.parametrize("aggregator, flower", [
    (AggregatorConfig("median"), lambda: FedMedian(min_available_nodes=5)),
    (AggregatorConfig("trimmed_mean", trim_fraction=0.2), lambda: FedTrimmedAvg(beta=0.2, min_available_nodes=5)),
    (AggregatorConfig("krum", num_malicious=1), lambda: Krum(num_malicious_nodes=1, min_available_nodes=5)),
    (AggregatorConfig("multikrum", num_malicious=1, num_selected=3),
     lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, min_available_nodes=5)),
])
def test_plain_robust_aggregation_equals_flowers_strategy(aggregator, flower):
    theirs, _ = flower().aggregate_train(1, replies())
    mine = ours(aggregator)
    for key, value in theirs.items():
        np.testing.assert_allclose(mine[key], value.numpy(), rtol=1e-6)
    assert abs(mine["image_head.0.weight"][0]) < 5  # the outlier is out


def test_median_and_trimmed_mean_by_hand():
    median = ours(AggregatorConfig("median"))
    assert median["image_head.0.weight"].tolist() == [2, 1] and median["logit_scale"] == 2.5
    trimmed = ours(AggregatorConfig("trimmed_mean", trim_fraction=0.2))  # int(0.2·5) = 1 cut at each end
    # first coordinate: 1 and 90 cut; second: -90 and 2 cut
    assert trimmed["image_head.0.weight"].tolist() == pytest.approx([(2 + 3 + 2) / 3, (0 + 1 + 1) / 3])


def test_modality_aware_median_votes_only_among_the_hospitals_that_trained_each_head():
    # Hospitals 0-2 trained both heads; 3 and 4 only the image head (report-less), and nobody paired but 0-2.
    counts = [(10, 10, 10), (20, 20, 20), (30, 30, 30), (0, 40, 0), (0, 50, 0)]
    median = ours(AggregatorConfig("median"), modality_aware=True, counts=counts)
    assert median["report_head.0.weight"].tolist() == [4]  # median of 3, 4, 5: hospital 4's 90 has no vote
    assert median["logit_scale"] == 2.0  # median of 1, 2, 3
    assert median["image_head.0.weight"].tolist() == [2, 1]  # all five vote on the image head


def test_modality_aware_krum_selects_per_head_group_and_weights_by_samples_used():
    counts = [(10, 10, 10), (20, 20, 20), (30, 30, 30), (0, 40, 0), (0, 50, 0)]
    average = RobustAverage(state([0, 0], [0], 0.0), "modality", AggregatorConfig("multikrum", num_selected=2))
    for target, (paired, images, reports) in zip(TARGETS, counts):
        average.add(state(*target), counts={HeadGroup.IMAGE: images, HeadGroup.REPORT: reports,
                                            HeadGroup.TEMPERATURE: paired})
    result = average.result()
    # Report head: hospitals 0-2 vote (values 3, 4, 5); n - f - 2 = 1 neighbour each: scores 1, 1, 1; Flower's
    # argsort keeps the first two, hospitals 0 and 1, averaged by reports used (10, 20).
    assert average.selected[HeadGroup.REPORT] == [0, 1]
    assert result["report_head.0.weight"].tolist() == pytest.approx([(3 * 10 + 4 * 20) / 30])


def test_selected_counts():
    assert selected_count(AggregatorConfig("krum", num_malicious=2), 8) == 1
    assert selected_count(AggregatorConfig("multikrum", num_malicious=2), 8) == 6
    assert selected_count(AggregatorConfig("multikrum", num_malicious=2, num_selected=9), 8) == 8


@pytest.mark.parametrize("overrides, message", [
    (["aggregator=median", "strategy=fednova"], "'fednova' combines hospitals its own way: use aggregator=mean"),
    (["aggregator=median", "privacy=client_fixed", "strategy.modality_aware=false"],
     "client-level DP's noise is calibrated to the uniform mean"),
    (["aggregator=trimmed_mean", "aggregator.trim_fraction=0.5"],
     r"aggregator.trim_fraction=0.5 must lie in \[0, 0.5\)"),
    (["aggregator.name=mode"], "aggregator.name='mode' is unknown; valid:"),
])
def test_impossible_aggregator_settings_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(user_config(*overrides))
