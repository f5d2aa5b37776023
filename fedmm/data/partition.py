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

A dataset read from disk (`StudyFacts`) adds what it knows: its own split (its `test` studies with both
modalities are the global test set), its patients (every split and hospital is by patient: a patient's
studies are never in two holders), the modalities on disk (a study lacks on disk what it lacks everywhere)
and its sites (`scenario=natural`: one hospital per site, `site_hospitals`).
"""

from dataclasses import dataclass

import numpy as np

from fedmm.config import ConfigError, HospitalMixConfig, MissingRateConfig, ModalityProfile, ScenarioConfig, SitesConfig
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
    site: str | None = None  # scenario=natural: the site (or merged sites) it stands for


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


@dataclass(frozen=True)
class StudyFacts:
    """What a dataset on disk says about its studies (`MultimodalDataset` fields of the same names)."""

    availability: np.ndarray  # (N,) int8 codes: the modalities on disk
    patients: tuple[str, ...]  # (N,)
    sites: tuple[str, ...] | None  # (N,)
    splits: np.ndarray | None  # (N,) train | test


SMALL_SITES = "small sites"


def site_hospitals(sites: list[str], sites_cfg: SitesConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The hospitals of `scenario=natural`, as (name, its sites), from the site of every training study:
    `groups` first, then each site with at least `min_studies` studies alone, then the rest merged."""
    counts: dict[str, int] = {}
    for site in sites:
        counts[site] = counts.get(site, 0) + 1
    if "" in counts:
        raise ConfigError(f"scenario=natural: {counts['']} training studies have an empty `site` cell; "
                          "give every study its site, or use a scenario that draws hospitals (e.g. scenario=balanced)")
    grouped = [tuple(group) for group in sites_cfg.groups]
    named = [site for group in grouped for site in group]
    unknown = sorted(set(named) - set(counts))
    if unknown or len(set(named)) != len(named):
        problem = f"sites {unknown} have no training study" if unknown else "a site is in two groups"
        raise ConfigError(f"scenario.sites.groups: {problem}; the sites are {dict(sorted(counts.items()))}")
    hospitals = [(" + ".join(group), group) for group in grouped]
    rest = sorted(site for site in counts if site not in named)
    hospitals += [(site, (site,)) for site in rest if counts[site] >= sites_cfg.min_studies]
    small = tuple(site for site in rest if counts[site] < sites_cfg.min_studies)
    if small:
        hospitals.append((SMALL_SITES, small))
    too_small = [(name, sum(counts[s] for s in members)) for name, members in hospitals
                 if sum(counts[s] for s in members) < max(sites_cfg.min_studies, MIN_TRAIN_PER_HOSPITAL + 1)]
    if too_small:
        raise ConfigError(
            f"scenario=natural: {too_small} have too few training studies to be a hospital (at least "
            f"{max(sites_cfg.min_studies, MIN_TRAIN_PER_HOSPITAL + 1)}; every site: {dict(sorted(counts.items()))}). "
            "Group them with larger sites (scenario.sites.groups=[[a, b]]) or lower scenario.sites.min_studies"
        )
    return hospitals


def patient_split(rows: np.ndarray, patients: tuple[str, ...], fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) rows of one holder: whole patients, in a seeded order, until `fraction` of the studies
    are in test (at least one patient in each when there are two)."""
    members: dict[str, list[int]] = {}
    for row in rows:
        members.setdefault(patients[row], []).append(int(row))
    order = [members[name] for name in sorted(members)]
    order = [order[i] for i in rng.permutation(len(order))]
    wanted = max(1, round(len(rows) * fraction))
    test: list[int] = []
    for index, studies in enumerate(order):
        if len(test) >= wanted or index == len(order) - 1 and test:
            break
        test += studies
    train = sorted(set(map(int, rows)) - set(test))
    return np.array(train, np.int64), np.array(sorted(test), np.int64)


def combine_availability(drawn: np.ndarray, on_disk: np.ndarray) -> np.ndarray:
    """A study holds a modality only if both the scenario and the disk give it; -1 where nothing is left."""
    image_codes = [AVAILABILITY_CODES[Availability.PAIRED], AVAILABILITY_CODES[Availability.IMAGE_ONLY]]
    report_codes = [AVAILABILITY_CODES[Availability.PAIRED], AVAILABILITY_CODES[Availability.REPORT_ONLY]]
    image = np.isin(drawn, image_codes) & np.isin(on_disk, image_codes)
    report = np.isin(drawn, report_codes) & np.isin(on_disk, report_codes)
    return np.select([image & report, image, report],
                     [AVAILABILITY_CODES[Availability.PAIRED], AVAILABILITY_CODES[Availability.IMAGE_ONLY],
                      AVAILABILITY_CODES[Availability.REPORT_ONLY]], -1).astype(np.int8)


def dominant_group(availability: np.ndarray) -> Availability:
    counts = [int((availability == AVAILABILITY_CODES[a]).sum()) for a in Availability]
    return list(Availability)[int(np.argmax(counts))]


def partition_studies(labels: np.ndarray, facts: StudyFacts, scenario: ScenarioConfig, global_test_fraction: float,
                      seed: int) -> Federation:
    """The seeded federation of a dataset on disk, by patient; natural sites when `scenario.sites` is set."""
    rng = np.random.default_rng([seed, PARTITION_STREAM])
    paired = AVAILABILITY_CODES[Availability.PAIRED]
    everyone = np.arange(len(labels))
    if facts.splits is not None:  # the dataset's own split
        test_rows, pool = everyone[facts.splits == "test"], everyone[facts.splits == "train"]
    else:
        pool, test_rows = patient_split(everyone, facts.patients, global_test_fraction, rng)
    global_test = np.sort(test_rows[facts.availability[test_rows] == paired])
    if not len(global_test):
        raise ConfigError("the dataset has no test study with both an image and a report: the server's global test "
                          "set needs pairs (the manifest's split column: mark some paired studies `test`)")
    if scenario.sites is not None:
        if facts.sites is None:
            raise ConfigError("scenario=natural needs a `site` column in the dataset's manifest")
        hospitals_of = site_hospitals([facts.sites[row] for row in pool], scenario.sites)
        site_to_hospital = {site: h for h, (_, members) in enumerate(hospitals_of) for site in members}
        owner = np.array([site_to_hospital[facts.sites[row]] for row in pool])
        members_of = [pool[owner == h] for h in range(len(hospitals_of))]
        profiles = None
    else:
        members_of = patient_members(pool, labels, facts.patients, scenario, rng)
        profiles = expand_profiles(scenario, seed)
    hospitals = []
    for hospital_id, members in enumerate(members_of):
        train, test = patient_split(members, facts.patients, scenario.local_test_fraction, rng)
        if profiles is None:
            train_codes, test_codes = facts.availability[train], facts.availability[test]
        else:
            train_codes = combine_availability(draw_availability(profiles[hospital_id], len(train), rng),
                                               facts.availability[train])
            test_codes = combine_availability(draw_availability(profiles[hospital_id], len(test), rng),
                                              facts.availability[test])
            train, train_codes = train[train_codes >= 0], train_codes[train_codes >= 0]
            test, test_codes = test[test_codes >= 0], test_codes[test_codes >= 0]
        if len(train) < MIN_TRAIN_PER_HOSPITAL or not len(test):
            raise ConfigError(f"hospital {hospital_id} would hold {len(train)} training and {len(test)} test studies "
                              f"(at least {MIN_TRAIN_PER_HOSPITAL} and 1); use fewer hospitals or more studies")
        hospitals.append(HospitalPartition(hospital_id, dominant_group(train_codes), train, test, train_codes,
                                           test_codes, None if profiles is not None else hospitals_of[hospital_id][0]))
    return Federation(tuple(hospitals), global_test)


def patient_members(pool: np.ndarray, labels: np.ndarray, patients: tuple[str, ...], scenario: ScenarioConfig,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Hospitals' rows for the knob scenarios on a dataset with patients: whole patients, sized and (with
    `dirichlet_alpha`) skewed by the primary finding of each patient's first study."""
    members: dict[str, list[int]] = {}
    for row in pool:
        members.setdefault(patients[row], []).append(int(row))
    names = sorted(members)
    sizes = hospital_sizes(len(names), scenario.num_hospitals, scenario.sample_skew, rng)
    if min(sizes) < 1:
        raise ConfigError(f"{scenario.num_hospitals} hospitals cannot share {len(names)} training patients; "
                          "lower scenario.num_hospitals")
    if scenario.dirichlet_alpha is None:
        order = rng.permutation(len(names))
        groups = np.split(order, np.cumsum(sizes)[:-1])
    else:
        first = np.array([members[name][0] for name in names])
        groups = dirichlet_split(primary_finding(np.maximum(labels[first], 0)), sizes, scenario.dirichlet_alpha, rng)
    return [np.array(sorted(row for i in group for row in members[names[i]]), np.int64) for group in groups]
