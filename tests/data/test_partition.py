"""The partitioner builds the federation it claims: sizes, modality shares and rates, Dirichlet skew."""

import numpy as np
import pytest
from helpers import configured

from fedmm.config import ConfigError, ModalityProfile, ScenarioConfig
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.data.partition import (
    draw_missing_rates,
    expand_profiles,
    largest_remainder,
    partition_dataset,
    primary_finding,
)
from fedmm.data.synthetic import generate_synthetic_cxr

PAIRED, IMAGE_ONLY, REPORT_ONLY = (AVAILABILITY_CODES[a] for a in Availability)


@pytest.fixture(scope="module")
def labels():
    return generate_synthetic_cxr(num_samples=1200, image_size=64, seed=0).labels


def scenario(**changes) -> ScenarioConfig:
    base = dict(name="t", num_hospitals=4, sample_skew=0.0, dirichlet_alpha=None, local_test_fraction=0.2,
                profiles=(ModalityProfile(count=4, paired=1.0),), hospital_mix=None, missing_rate=None,
                sites=None)
    return ScenarioConfig(**(base | changes))


def test_splits_are_disjoint_and_cover_the_dataset(labels):
    federation = partition_dataset(labels, scenario(), global_test_fraction=0.25, seed=0)
    parts = [federation.global_test_indices] + [np.concatenate([h.train_indices, h.test_indices])
                                                for h in federation.hospitals]
    everything = np.concatenate(parts)
    assert len(everything) == len(set(everything.tolist())) == 1200
    assert len(federation.global_test_indices) == 300


def test_equal_sizes_without_skew_and_ordered_sizes_with_it(labels):
    equal = partition_dataset(labels, scenario(), 0.25, seed=0)
    sizes = [len(h.train_indices) + len(h.test_indices) for h in equal.hospitals]
    assert sizes == [225, 225, 225, 225]
    skewed = partition_dataset(labels, scenario(sample_skew=1.0), 0.25, seed=0)
    sizes = sorted(len(h.train_indices) + len(h.test_indices) for h in skewed.hospitals)
    assert sum(sizes) == 900
    assert sizes == sorted(largest_remainder(900, np.array([1, 1 / 2, 1 / 3, 1 / 4])).tolist())  # ∝ 1/rank


def test_exact_modality_shares(labels):
    profile = ModalityProfile(count=2, paired=0.5, image_only=0.25, report_only=0.25)
    federation = partition_dataset(labels, scenario(num_hospitals=2, profiles=(profile,)), 0.2, seed=1)
    for hospital in federation.hospitals:
        codes = hospital.train_availability
        counts = [int((codes == c).sum()) for c in (PAIRED, IMAGE_ONLY, REPORT_ONLY)]
        assert counts == largest_remainder(len(codes), np.array([0.5, 0.25, 0.25])).tolist()
        assert hospital.group is Availability.PAIRED


def test_per_sample_missing_rates(labels):
    profile = ModalityProfile(count=1, missing_image_rate=0.2, missing_report_rate=0.3)
    federation = partition_dataset(labels, scenario(num_hospitals=1, profiles=(profile,)), 0.1, seed=2)
    codes = federation.hospitals[0].train_availability  # n = 864
    n = len(codes)
    for code, rate in ((REPORT_ONLY, 0.2), (IMAGE_ONLY, 0.3), (PAIRED, 0.5)):
        assert abs((codes == code).mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    assert (codes == REPORT_ONLY).sum() != round(0.2 * n) or (codes == IMAGE_ONLY).sum() != round(0.3 * n)


def test_unimodal_profiles_and_groups(labels):
    profiles = (ModalityProfile(count=1, image_only=1.0), ModalityProfile(count=1, report_only=1.0),
                ModalityProfile(count=1, paired=1.0))
    federation = partition_dataset(labels, scenario(num_hospitals=3, profiles=profiles), 0.2, seed=0)
    image_only, report_only, paired = federation.hospitals
    assert (image_only.train_availability == IMAGE_ONLY).all() and (image_only.test_availability == IMAGE_ONLY).all()
    assert (report_only.train_availability == REPORT_ONLY).all()
    assert [h.group for h in federation.hospitals] == [Availability.IMAGE_ONLY, Availability.REPORT_ONLY,
                                                       Availability.PAIRED]


def mean_total_variation(labels, alpha, seed) -> float:
    federation = partition_dataset(labels, scenario(num_hospitals=5, profiles=(ModalityProfile(5, paired=1.0),),
                                                    dirichlet_alpha=alpha), 0.2, seed=seed)
    classes = primary_finding(labels)
    k = classes.max() + 1
    overall = np.bincount(classes, minlength=k) / len(classes)
    distances = []
    for hospital in federation.hospitals:
        members = np.concatenate([hospital.train_indices, hospital.test_indices])
        mix = np.bincount(classes[members], minlength=k) / len(members)
        distances.append(0.5 * np.abs(mix - overall).sum())
    return float(np.mean(distances))


def test_dirichlet_alpha_controls_skew(labels):
    for seed in range(3):
        skewed, mild, iid = (mean_total_variation(labels, a, seed) for a in (0.1, 100.0, None))
        assert skewed > 0.3 > 0.15 > mild and iid < 0.15, (skewed, mild, iid)


def test_same_seed_same_federation_other_seed_other(labels):
    s = scenario(dirichlet_alpha=0.5, profiles=(ModalityProfile(4, missing_image_rate=0.3),))
    a, b, c = (partition_dataset(labels, s, 0.2, seed) for seed in (5, 5, 6))
    assert all(
        np.array_equal(x.train_indices, y.train_indices) and np.array_equal(x.train_availability, y.train_availability)
        for x, y in zip(a.hospitals, b.hospitals)
    )
    assert not np.array_equal(a.global_test_indices, c.global_test_indices)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(profiles=(ModalityProfile(4, paired=0.5, image_only=0.2),)), "must sum to 1"),
        (dict(profiles=(ModalityProfile(4, missing_image_rate=0.7, missing_report_rate=0.5),)), "cannot lose both"),
        (dict(profiles=(ModalityProfile(4, paired=1.0, missing_image_rate=0.1),)), "not both"),
        (dict(profiles=(ModalityProfile(3, paired=1.0),)), "add up to the number of hospitals"),
        (dict(num_hospitals=400, profiles=(ModalityProfile(400, paired=1.0),)), "cannot share"),
        (dict(dirichlet_alpha=0.0), "dirichlet_alpha"),
    ],
)
def test_impossible_scenarios_fail_with_the_option_named(labels, changes, message):
    with pytest.raises(ConfigError, match=message):
        partition_dataset(labels, scenario(**changes), 0.2, seed=0)


# The knob form (`profiles` empty): hospital_mix and missing_rate, as the sweeps vary them.


def knobs(num_hospitals: int = 8, unimodal: float = 0.0, image_only_fraction: float = 0.5, **rates) -> ScenarioConfig:
    return scenario(
        name="knobs",
        num_hospitals=num_hospitals,
        profiles=(),
        hospital_mix=configured(
            "scenario.hospital_mix", "scenario=mix", unimodal=unimodal, image_only_fraction=image_only_fraction
        ),
        missing_rate=configured("scenario.missing_rate", "scenario=mix", **rates),
    )


@pytest.mark.parametrize(
    "unimodal, image_only_fraction, expected",
    [
        (0.0, 0.5, (8, 0, 0)),
        (0.25, 0.5, (6, 1, 1)),
        (0.5, 0.5, (4, 2, 2)),
        (0.75, 0.5, (2, 3, 3)),
        (0.25, 1.0, (6, 2, 0)),
        (1.0, 0.0, (0, 0, 8)),
    ],
)
def test_hospital_mix_gives_the_claimed_groups(labels, unimodal, image_only_fraction, expected):
    federation = partition_dataset(labels, knobs(8, unimodal, image_only_fraction), 0.2, seed=0)
    groups = [h.group for h in federation.hospitals]
    assert tuple(groups.count(a) for a in Availability) == expected
    for hospital in federation.hospitals:  # a unimodal hospital holds that modality only, in both splits
        if hospital.group is not Availability.PAIRED:
            code = AVAILABILITY_CODES[hospital.group]
            assert (hospital.train_availability == code).all() and (hospital.test_availability == code).all()


def test_fixed_missing_rates_hold_in_every_paired_hospital(labels):
    federation = partition_dataset(labels, knobs(4, image=0.2, report=0.3), 0.1, seed=3)
    for hospital in federation.hospitals:
        codes = np.concatenate([hospital.train_availability, hospital.test_availability])
        n = len(codes)
        for code, rate in ((REPORT_ONLY, 0.2), (IMAGE_ONLY, 0.3)):  # lacking the image = report only
            assert abs(np.mean(codes == code) - rate) < 4 * np.sqrt(rate * (1 - rate) / n), (hospital.hospital_id, code)


def test_beta_missing_rates_have_the_claimed_mean_and_spread():
    rates = draw_missing_rates(
        configured(
            "scenario.missing_rate", "scenario=mix", image=0.1, report=0.3, distribution="beta", concentration=4.0
        ),
        20000,
        np.random.default_rng(0),
    )
    for column, mean in enumerate((0.1, 0.3)):
        assert abs(rates[:, column].mean() - mean) < 0.01
        assert abs(rates[:, column].var() - mean * (1 - mean) / 5.0) < 0.005  # Beta variance m(1-m)/(c+1)
    assert (rates.sum(axis=1) <= 1 + 1e-12).all()
    fixed = draw_missing_rates(
        configured("scenario.missing_rate", "scenario=mix", image=0.1, report=0.3), 3, np.random.default_rng(0)
    )
    assert np.array_equal(fixed, [[0.1, 0.3]] * 3)


def test_beta_rates_differ_between_hospitals_and_follow_the_seed(labels):
    scenario_ = knobs(4, image=0.3, distribution="beta", concentration=2.0)
    first, again, other = (expand_profiles(scenario_, seed) for seed in (0, 0, 1))
    assert first == again and first != other
    assert len({p.missing_image_rate for p in first}) == 4


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(unimodal=1.5), r"scenario.hospital_mix.unimodal=1.5 must lie in \[0, 1\]"),
        (dict(image=0.6, report=0.6), "cannot lose both"),
        (dict(distribution="gamma"), "scenario.missing_rate.distribution='gamma' is unknown"),
    ],
)
def test_bad_knobs_are_named(labels, changes, message):
    with pytest.raises(ConfigError, match=message):
        partition_dataset(labels, knobs(**changes), 0.2, seed=0)


def test_profiles_and_knobs_together_are_refused(labels):
    both = scenario(hospital_mix=configured("scenario.hospital_mix", "scenario=mix", unimodal=0.5))
    with pytest.raises(ConfigError, match="either profiles or the knobs"):
        partition_dataset(labels, both, 0.2, seed=0)
