"""Split a dataset into a federation of hospitals: sizes, finding mix and modality availability.

Seeded and deterministic. Steps: hold out the server's global test set; draw hospital sizes
(∝ rank^-skew); give each hospital a finding mix q_h ~ Dir(alpha · K · p), where p is the global mix
of each study's primary finding over K classes (Hsu et al., 2019, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification"; with uniform p this is the
usual Dir(alpha) convention: 0.1 very skewed, 100 nearly IID); split each hospital into train and
local test; finally mark each sample paired, image-only or report-only from the hospital's profile.

A scenario gives its hospitals' modality profiles explicitly (`profiles`), or through knobs meant for
sweeps: the share of unimodal hospitals and how they split between images and reports (`hospital_mix`),
and per-study missing rates in the paired hospitals, fixed or drawn per hospital from a Beta
distribution (`missing_rate`).
"""

from dataclasses import dataclass

import numpy as np

from fedmm.config import ConfigError, HospitalMixConfig, MissingRateConfig, ModalityProfile, ScenarioConfig
from fedmm.data.modality import AVAILABILITY_CODES, Availability

MIN_TRAIN_PER_HOSPITAL = 4
PARTITION_STREAM = 1  # separates the partitioner's random stream from other users of the seed


@dataclass(frozen=True)
class HospitalPartition:
    hospital_id: int
    group: Availability  # the hospital's dominant modality group, for per-group reporting
    train_indices: np.ndarray  # (n_train,) dataset indices
    test_indices: np.ndarray  # (n_test,)
    train_availability: np.ndarray  # (n_train,) int8 codes of `Availability`
    test_availability: np.ndarray  # (n_test,)


@dataclass(frozen=True)
class Federation:
    hospitals: tuple[HospitalPartition, ...]
    global_test_indices: np.ndarray  # held by the server; no hospital has these studies


def profile_shares(profile: ModalityProfile, where: str) -> dict[Availability, float]:
    """Expected share of each availability for a profile; validates it."""
    shares = (profile.paired, profile.image_only, profile.report_only)
    rates = (profile.missing_image_rate, profile.missing_report_rate)
    uses_shares, uses_rates = any(v is not None for v in shares), any(v is not None for v in rates)
    if uses_shares == uses_rates:
        raise ConfigError(
            f"{where}: give either shares (paired/image_only/report_only, summing to 1) or per-sample "
            f"missing rates (missing_image_rate/missing_report_rate), not {'both' if uses_shares else 'neither'}"
        )
    values = [v or 0.0 for v in (shares if uses_shares else rates)]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"{where}: shares and rates must lie in [0, 1], got {values}")
    if uses_shares:
        if abs(sum(values) - 1.0) > 1e-6:
            raise ConfigError(
                f"{where}: paired + image_only + report_only = {sum(values):g}; the shares must sum to 1"
            )
        return dict(zip(Availability, values))
    missing_image, missing_report = values
    if missing_image + missing_report > 1.0 + 1e-9:
        raise ConfigError(
            f"{where}: missing_image_rate + missing_report_rate = {missing_image + missing_report:g} > 1;"
            " a sample cannot lose both modalities"
        )
    return {Availability.PAIRED: 1.0 - missing_image - missing_report,
            Availability.IMAGE_ONLY: missing_report, Availability.REPORT_ONLY: missing_image}


MISSING_RATE_DISTRIBUTIONS = ("fixed", "beta")
MISSING_RATE_STREAM = 3  # per-hospital missing rates drawn from a distribution (the knob form)


def expand_profiles(scenario: ScenarioConfig, seed: int = 0) -> list[ModalityProfile]:
    """One profile per hospital, in hospital order: the explicit `profiles`, or the knobs
    (`hospital_mix`, `missing_rate`) when `profiles` is empty. Validates either."""
    if not scenario.profiles:
        return knob_profiles(scenario, seed)
    mix, rates = scenario.hospital_mix, scenario.missing_rate
    if (mix is not None and mix.unimodal > 0) or (rates is not None and (rates.image > 0 or rates.report > 0)):
        raise ConfigError("scenario: give either profiles or the knobs hospital_mix / missing_rate, not both; "
                          "set scenario.profiles=[] to use the knobs, or the knobs to null to use the profiles")
    total = sum(profile.count for profile in scenario.profiles)
    if total != scenario.num_hospitals:
        raise ConfigError(
            f"scenario.profiles cover {total} hospitals but scenario.num_hospitals={scenario.num_hospitals};"
            " make the profile counts add up to the number of hospitals"
        )
    for index, profile in enumerate(scenario.profiles):
        if profile.count < 0:
            raise ConfigError(f"scenario.profiles[{index}].count={profile.count} must be >= 0")
        profile_shares(profile, f"scenario.profiles[{index}]")
    return [profile for profile in scenario.profiles for _ in range(profile.count)]


def group_counts(num_hospitals: int, mix: HospitalMixConfig) -> dict[Availability, int]:
    """Hospitals per modality group from the shares, rounded so that they add up (largest remainder)."""
    for name, value in (("unimodal", mix.unimodal), ("image_only_fraction", mix.image_only_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"scenario.hospital_mix.{name}={value} must lie in [0, 1]")
    shares = np.array([1.0 - mix.unimodal, mix.unimodal * mix.image_only_fraction,
                       mix.unimodal * (1.0 - mix.image_only_fraction)])
    return dict(zip(Availability, (int(c) for c in largest_remainder(num_hospitals, shares))))


def draw_missing_rates(rates: MissingRateConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) per-hospital (missing image, missing report) rates: fixed, or Beta draws with the given
    means and concentration; a hospital whose two rates pass 1 has them scaled down to sum to 1."""
    if rates.distribution not in MISSING_RATE_DISTRIBUTIONS:
        raise ConfigError(f"scenario.missing_rate.distribution={rates.distribution!r} is unknown; "
                          f"valid: {list(MISSING_RATE_DISTRIBUTIONS)}")
    means = np.array([rates.image, rates.report])
    if np.any(means < 0) or np.any(means > 1) or means.sum() > 1 + 1e-9:
        raise ConfigError(f"scenario.missing_rate: image={rates.image}, report={rates.report} must lie in [0, 1] "
                          "and sum to at most 1 (a study cannot lose both modalities)")
    if rates.concentration <= 0:
        raise ConfigError(f"scenario.missing_rate.concentration={rates.concentration} must be positive")
    if rates.distribution == "fixed":
        return np.tile(means, (count, 1))
    drawn = np.zeros((count, 2))
    for column, mean in enumerate(means):
        if 0 < mean < 1:  # Beta(0, b) and Beta(a, 0) are point masses: the mean itself
            drawn[:, column] = rng.beta(mean * rates.concentration, (1 - mean) * rates.concentration, size=count)
        else:
            drawn[:, column] = mean
    totals = drawn.sum(axis=1, keepdims=True)
    return np.where(totals > 1, drawn / totals, drawn)


def knob_profiles(scenario: ScenarioConfig, seed: int) -> list[ModalityProfile]:
    """Paired hospitals first (each with its missing rates), then image-only, then report-only ones."""
    if scenario.hospital_mix is None or scenario.missing_rate is None:
        raise ConfigError("scenario.profiles is empty, so the knobs decide every hospital's modalities: set "
                          "scenario.hospital_mix and scenario.missing_rate (see configs/scenario/mix.yaml)")
    counts = group_counts(scenario.num_hospitals, scenario.hospital_mix)
    rng = np.random.default_rng([seed, PARTITION_STREAM, MISSING_RATE_STREAM])
    rates = draw_missing_rates(scenario.missing_rate, counts[Availability.PAIRED], rng)
    paired = [ModalityProfile(1, paired=1.0) if not image and not report
              else ModalityProfile(1, missing_image_rate=float(image), missing_report_rate=float(report))
              for image, report in rates]
    return (paired + [ModalityProfile(1, image_only=1.0)] * counts[Availability.IMAGE_ONLY]
            + [ModalityProfile(1, report_only=1.0)] * counts[Availability.REPORT_ONLY])


def check_scenario(scenario: ScenarioConfig, num_samples: int, global_test_fraction: float) -> None:
    """Fail before any work on settings no federation can satisfy."""
    if scenario.num_hospitals < 1:
        raise ConfigError(f"scenario.num_hospitals={scenario.num_hospitals} must be at least 1")
    expand_profiles(scenario)
    if scenario.dirichlet_alpha is not None and scenario.dirichlet_alpha <= 0:
        raise ConfigError(f"scenario.dirichlet_alpha={scenario.dirichlet_alpha} must be > 0 (or null for IID)")
    if scenario.sample_skew < 0:
        raise ConfigError(f"scenario.sample_skew={scenario.sample_skew} must be >= 0 (0 = equal sizes)")
    if not 0.0 < scenario.local_test_fraction < 1.0:
        raise ConfigError(f"scenario.local_test_fraction={scenario.local_test_fraction} must lie in (0, 1)")
    if not 0.0 < global_test_fraction < 1.0:
        raise ConfigError(f"dataset.global_test_fraction={global_test_fraction} must lie in (0, 1)")
    pool = num_samples - round(num_samples * global_test_fraction)
    smallest = min(hospital_sizes(pool, scenario.num_hospitals, scenario.sample_skew, np.random.default_rng(0)))
    if smallest * (1 - scenario.local_test_fraction) < MIN_TRAIN_PER_HOSPITAL:
        raise ConfigError(
            f"{scenario.num_hospitals} hospitals cannot share {pool} training studies (dataset.num_samples="
            f"{num_samples}, sample_skew={scenario.sample_skew}): the smallest would get {smallest}. Raise "
            f"dataset.num_samples, lower scenario.num_hospitals or scenario.sample_skew"
        )


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to `weights` that sum exactly to `total`."""
    weights = np.asarray(weights, dtype=np.float64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: total - counts.sum()]] += 1
    return counts


def hospital_sizes(pool: int, num_hospitals: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Hospital sizes ∝ rank^-skew, ranks shuffled so that size does not follow the profile order."""
    weights = np.arange(1, num_hospitals + 1, dtype=np.float64) ** -skew
    return largest_remainder(pool, rng.permutation(weights))


def primary_finding(labels: np.ndarray) -> np.ndarray:
    """One class per study for Dirichlet splitting: its rarest finding, or K-1 ("normal") when none."""
    prevalence = labels.mean(axis=0) + 1e-9
    rarity_order = np.argsort(prevalence, kind="stable")  # rarest first
    classes = np.full(len(labels), labels.shape[1], dtype=np.int64)
    for finding in rarity_order[::-1]:  # rarest last, so it wins
        classes[labels[:, finding] == 1] = finding
    return classes


def dirichlet_split(classes: np.ndarray, sizes: np.ndarray, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Positions into `classes` for each hospital, with exact `sizes` and mixes ~ Dir(alpha·K·p)."""
    num_classes = int(classes.max()) + 1
    global_mix = np.bincount(classes, minlength=num_classes) / len(classes)
    pools = [list(rng.permutation(np.flatnonzero(classes == c))) for c in range(num_classes)]
    concentration = np.maximum(alpha * num_classes * global_mix, 1e-6)
    assignment: list[np.ndarray] = [np.empty(0, np.int64)] * len(sizes)
    for hospital in rng.permutation(len(sizes)):  # random order: no hospital always picks first
        wanted = largest_remainder(int(sizes[hospital]), rng.dirichlet(concentration))
        taken: list[int] = []
        for c in range(num_classes):
            take = min(int(wanted[c]), len(pools[c]))
            taken += pools[c][:take]
            del pools[c][:take]
        while len(taken) < sizes[hospital]:  # shortfall: fill from the classes with the most left
            c = int(np.argmax([len(pool) for pool in pools]))
            taken.append(pools[c].pop())
        assignment[hospital] = np.array(sorted(taken), dtype=np.int64)
    return assignment


def draw_availability(profile: ModalityProfile, count: int, rng: np.random.Generator) -> np.ndarray:
    """Availability codes for `count` samples: exact shares, or independent per-sample draws from rates."""
    shares = profile_shares(profile, "profile")
    codes = np.array([AVAILABILITY_CODES[a] for a in Availability], dtype=np.int8)
    if profile.missing_image_rate is None and profile.missing_report_rate is None:
        counts = largest_remainder(count, np.array([shares[a] for a in Availability])) if count else np.zeros(3, int)
        return rng.permutation(np.repeat(codes, counts))
    probabilities = np.array([shares[a] for a in Availability])
    return rng.choice(codes, size=count, p=probabilities / probabilities.sum())


def partition_dataset(labels: np.ndarray, scenario: ScenarioConfig, global_test_fraction: float,
                      seed: int) -> Federation:
    """The seeded federation for a dataset with finding `labels` (N, F)."""
    check_scenario(scenario, len(labels), global_test_fraction)
    profiles = expand_profiles(scenario, seed)
    rng = np.random.default_rng([seed, PARTITION_STREAM])
    order = rng.permutation(len(labels))
    num_global_test = round(len(labels) * global_test_fraction)
    global_test, pool = np.sort(order[:num_global_test]), order[num_global_test:]

    sizes = hospital_sizes(len(pool), scenario.num_hospitals, scenario.sample_skew, rng)
    if scenario.dirichlet_alpha is None:
        cuts = np.cumsum(sizes)[:-1]
        members = [np.sort(part) for part in np.split(rng.permutation(pool), cuts)]
    else:
        positions = dirichlet_split(primary_finding(labels[pool]), sizes, scenario.dirichlet_alpha, rng)
        members = [np.sort(pool[p]) for p in positions]

    hospitals = []
    for hospital_id, (indices, profile) in enumerate(zip(members, profiles)):
        shuffled = rng.permutation(indices)
        num_test = max(1, round(len(indices) * scenario.local_test_fraction))
        test, train = np.sort(shuffled[:num_test]), np.sort(shuffled[num_test:])
        shares = profile_shares(profile, f"profile of hospital {hospital_id}")
        group = max(Availability, key=lambda a: shares[a])  # ties go to the earlier group (paired first)
        hospitals.append(
            HospitalPartition(
                hospital_id,
                group,
                train,
                test,
                draw_availability(profile, len(train), rng),
                draw_availability(profile, len(test), rng),
            )
        )
    return Federation(tuple(hospitals), global_test)
