"""The experiment configuration: composed by Hydra from `configs/`, parsed once into typed dataclasses.

The YAML files in `configs/` are the only source of defaults: these dataclasses declare the options and
their types, and every field must be given (a test composes every shipped file).

Every function takes the part it needs (`cfg.scenario`, `cfg.train`), never a raw dict or a Flower
Context. Parsing rejects unknown keys and wrong types with the dotted name of the option.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration a run cannot start from; the message names the option and the fix."""


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    num_samples: int | None  # synthetic: studies to generate; folder: null = every study of the manifest
    image_size: int  # px; the generator draws 64-256; folder images are fitted to it before encoding
    seed: int  # the content's seed, separate from the run's seed: runs with other seeds share one dataset
    global_test_fraction: float  # held by the server; no hospital trains on it (folder: its `test` rows instead)
    path: str | None  # folder: the dataset's directory (manifest.csv); null for generated datasets
    prompts: str | None  # folder: a YAML of zero-shot prompts per label; null: <path>/prompts.yaml if present
    labels: tuple[str, ...] | None  # folder: the label columns to use; null: every column beyond the known ones


@dataclass(frozen=True)
class ModalityProfile:
    """Modality availability for `count` hospitals.

    Either exact shares (`paired`, `image_only`, `report_only`; they must sum to 1) or per-sample
    missing rates (`missing_image_rate`, `missing_report_rate`; each sample draws its availability).
    """

    count: int
    paired: float | None = None
    image_only: float | None = None
    report_only: float | None = None
    missing_image_rate: float | None = None
    missing_report_rate: float | None = None


@dataclass(frozen=True)
class HospitalMixConfig:
    """Modality groups as shares of hospitals (the knob form of a scenario, used when `profiles` is empty)."""

    unimodal: float  # share of hospitals that hold one modality only
    image_only_fraction: float  # of those, the share with images only; the rest hold reports only


@dataclass(frozen=True)
class MissingRateConfig:
    """Per-study missing modality inside each paired hospital (knob form, used when `profiles` is empty)."""

    image: float  # rate (fixed) or mean rate (beta) at which a study lacks its image
    report: float  # ... lacks its report
    distribution: str  # fixed: every paired hospital has these rates | beta: each draws its own
    concentration: float  # beta: a + b of Beta(mean·c, (1 - mean)·c); higher: hospitals closer to the mean


@dataclass(frozen=True)
class SitesConfig:
    """`scenario=natural`: one hospital per value of the dataset's `site` column (FLamby's natural splits)."""

    min_studies: int  # sites with fewer studies are merged into one hospital ("small sites")
    groups: tuple[tuple[str, ...], ...]  # sites that become one hospital each, e.g. [[a, b], [c]]; others alone


@dataclass(frozen=True)
class AdversaryConfig:
    """Faulty or malicious hospitals (`scenario.adversaries`): one by id, or a seeded fraction of them.
    The kinds and what each sends are in `fedmm.clients.adversary`."""

    kind: str  # noise | sign_flip | scale | stale | shuffled_pairs
    hospital: int | None = None  # this hospital; or
    fraction: float | None = None  # round(fraction x num_hospitals) hospitals drawn from the run's seed
    scale: float = 1.0  # noise: its std; sign_flip and scale: the factor on the honest update


@dataclass(frozen=True)
class ScenarioConfig:
    name: str
    num_hospitals: int | None  # natural: null, one per site (filled in from the dataset before the run)
    sample_skew: float  # hospital sizes ∝ rank^-skew; 0 = equal sizes
    dirichlet_alpha: float | None  # finding mix per hospital ~ Dir(alpha * global mix); null = IID
    local_test_fraction: float
    # Either explicit profiles, or (when empty) the knobs below.
    profiles: tuple[ModalityProfile, ...]
    hospital_mix: HospitalMixConfig | None  # null when `profiles` decide
    missing_rate: MissingRateConfig | None  # null when `profiles` decide
    sites: SitesConfig | None  # natural: hospitals are the dataset's sites (no sizes, mixes or profiles drawn)
    adversaries: tuple[AdversaryConfig, ...] = ()  # hospitals that send corrupted updates; empty: all honest


@dataclass(frozen=True)
class ImageEncoderConfig:
    name: str
    weights: str | None  # a local state_dict file; null = seeded random init (nothing is downloaded)
    init_seed: int
    pooling: str
    input_size: int
    batch_size: int


@dataclass(frozen=True)
class TextEncoderConfig:
    name: str
    path: str | None  # a local Hugging Face model directory; null = the packaged MiniLM
    max_tokens: int
    batch_size: int


@dataclass(frozen=True)
class EncodersConfig:
    image: ImageEncoderConfig
    text: TextEncoderConfig


@dataclass(frozen=True)
class HeadsConfig:
    hidden_dim: int
    embed_dim: int
    init_temperature: float  # CLIP's initial softmax temperature; learnable


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    objective: str  # in_batch | reference_bank | auto (reference_bank exactly when privacy.sample is on)
    bank_size: int  # reference_bank: negatives per step, drawn from the non-private reference set


@dataclass(frozen=True)
class MissingModalityConfig:
    """How image-only and report-only samples take part in a hospital's local training.

    ignore: only pairs train (the baseline); prototype: prototype anchoring; retrieval: retrieval
    imputation of the missing side from the reference set (see `fedmm.training.missing`)."""

    handler: str  # ignore | prototype | retrieval
    weight: float  # prototype: weight of the unimodal term next to the pairs' InfoNCE
    num_prototypes: int  # prototype: k-means clusters of the reference set; more: finer, noisier targets
    temperature: float  # prototype: softmax temperature over the prototypes (fixed, not learned)
    retrieval_k: int  # retrieval: reference neighbours whose other side is averaged into the imputed features


@dataclass(frozen=True)
class StrategyConfig:
    """The strategy by name; every other key of the `strategy` group is that strategy's own option,
    parsed by the options dataclass its file declares (`fedmm.strategies.StrategySpec.options`)."""

    name: str
    modality_aware: bool | None = None  # averaging strategies: average each head over the hospitals that trained it
    options: Mapping[str, Any] = field(default_factory=dict)
    # `options` holds the group's other keys as given; `strategy_options(cfg)` returns them typed.

@dataclass(frozen=True)
class AggregatorConfig:
    """How the server combines the hospitals' heads (`aggregator=NAME`; `fedmm.aggregation.robust`)."""

    name: str = "mean"  # mean | median | trimmed_mean | krum | multikrum
    trim_fraction: float = 0.0  # trimmed_mean: β, the fraction cut at each end of every coordinate
    num_malicious: int = 0  # krum, multikrum: f, the attackers each score allows for (n - f - 2 neighbours)
    num_selected: int | None = None  # multikrum: m, updates averaged; null: n - f


@dataclass(frozen=True)
class AvailabilityConfig:
    """When a sampled hospital is offline (`conditions.availability`; `fedmm.simulation.conditions`)."""

    dropout: float = 0.0  # long-run share of rounds a hospital is offline; 0: always online
    distribution: str = "fixed"  # fixed: every hospital has `dropout` | beta: each draws its own rate
    concentration: float = 10.0  # beta: a + b of Beta(dropout·c, (1 - dropout)·c); higher: closer to the mean
    outage_rounds: int = 1  # an outage lasts this many rounds; 1: independent rounds


@dataclass(frozen=True)
class ComputeConfig:
    """How fast each hospital trains, in virtual time (`conditions.compute`)."""

    samples_per_s: float | None = None  # median training speed; null: no virtual clock
    distribution: str = "fixed"  # fixed: every hospital at `samples_per_s` | lognormal: each draws its own
    sigma: float = 0.5  # lognormal: std of log(speed); the median stays `samples_per_s`


@dataclass(frozen=True)
class ConditionsConfig:
    """The simulated hospitals' machines: offline rounds, training speed and the round's deadline, all in
    virtual time (`conditions=NAME`). The default, `ideal`: always online, no clock."""

    name: str = "ideal"
    availability: AvailabilityConfig = AvailabilityConfig()
    compute: ComputeConfig = ComputeConfig()
    deadline_s: float | None = None  # virtual seconds the server waits for a round's updates; null: the slowest
    late: str = "drop"  # drop: a hospital past the deadline sends nothing | partial: the steps that fit


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ (Bell et al., 2020) over the averaging strategies (`secagg.enabled`; `fedmm.strategies.secagg`):
    the server learns only the sum of the hospitals' weighted updates. Flower's names and defaults."""

    enabled: bool = False
    num_shares: float = 1.0  # neighbours each hospital shares its secrets with: a fraction of the round's
    #                          hospitals (1.0: all of them, SecAgg) or, above 1, a count
    threshold: float = 0.5  # shares that reconstruct a secret: a fraction of num_shares or, above 1, a count;
    #                          a round needs this many hospitals left among every hospital's neighbours
    max_weight: float = 1000.0  # W: weights are sent as w/W; keep it near the largest training-set size
    clipping_range: float = 8.0  # R: every w/W·Δ entry is clipped to [-R, R] before quantization
    quantization_range: int = 4194304  # Q = 2^22 levels over [-R, R]
    modulus_range: int = 4294967296  # 2^32: masks and sums live modulo this


@dataclass(frozen=True)
class ReferenceConfig:
    """A non-private dataset the server and every hospital may read (distillation targets).

    Generated like `dataset` but from its own content seed, so no study is any hospital's; or a public
    folder dataset (`name: folder`, `path`), whose paired studies it uses."""

    name: str
    num_samples: int | None  # synthetic: studies to generate; folder: null = all of them
    seed: int  # content seed; must differ from dataset.seed so no hospital study is in it
    path: str | None  # name=folder: a dataset folder (not the federation's own)


@dataclass(frozen=True)
class SampleDPConfig:
    """Sample-level DP inside each hospital: DP-SGD through Opacus (per-sample clipping, Gaussian noise,
    Poisson sampling). Set `noise_multiplier` or `target_epsilon`, not both."""

    enabled: bool
    noise_multiplier: float | None  # σ: noise std / max_grad_norm
    target_epsilon: float | None  # ε after every planned round; each hospital derives its σ from it
    delta: float | None  # null: 1/(10·n) for the hospital's n paired training samples
    max_grad_norm: float  # C: every sample's gradient is clipped to this L2 norm
    max_epsilon: float | None  # the budget; null: target_epsilon (with a noise multiplier: no budget)
    accountant: str = "rdp"  # rdp | pld: how ε is computed, reported and calibrated (`fedmm.privacy.accounting`)


@dataclass(frozen=True)
class ClientDPConfig:
    """Client-level DP across the federation: one of Flower's DP strategy wrappers (central noise)."""

    clipping: str  # none | server_fixed | server_adaptive | client_fixed | client_adaptive
    noise_multiplier: float  # z: noise std / clipping norm on the summed updates
    clipping_norm: float  # fixed: the L2 bound on a hospital's update; adaptive: the initial bound
    target_quantile: float  # adaptive: the share of updates left unclipped
    clip_norm_lr: float  # adaptive: geometric step of the bound per round
    clipped_count_stddev: float | None  # adaptive: noise on the unclipped count; null: sampled/20
    delta: float  # must be below 1/num_hospitals
    max_epsilon: float | None  # per-hospital budget; null: none


@dataclass(frozen=True)
class PrivacyConfig:
    sample: SampleDPConfig
    client: ClientDPConfig
    on_budget: str  # stop_hospital: it trains no more | stop_run: the run ends there


@dataclass(frozen=True)
class FederationConfig:
    rounds: int
    clients_per_round: int | None  # a count; wins over fraction_train when set
    fraction_train: float
    evaluate_every: int  # rounds between evaluations; the last round is always evaluated
    round_timeout_s: float
    # Hospitals that must remain for the run to go on when some fail (a node that dies, an error reply);
    # null: every hospital (the first failure stops the run). Finished rounds are kept either way.
    min_hospitals: int | None
    # fixed: exactly m hospitals a round | poisson: each one independently with probability m/N (m from
    # clients_per_round or fraction_train); client-level DP then reports ε amplified by the sampling
    sampling: str = "fixed"


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Model selection on a validation split held out from the server's global test pool (`fedmm.runs.selection`)."""

    metric: str | None = None  # a registered metric, higher is better; None: no validation, the last round counts
    patience: int | None = 5  # evaluations without improvement before the run stops; None: run on, only select
    validation_fraction: float = 0.5  # of the global test pool; the test set is the rest


@dataclass(frozen=True)
class DeploymentConfig:
    """Flower's Deployment Engine: each SuperNode reads its own hospital folder (node config `data-dir`)."""

    server_test_dir: str | None  # the server's global test set as a hospital folder; null: simulated


@dataclass(frozen=True)
class SimulationConfig:
    engine: str  # pool: long-lived worker processes | ray: Flower's Simulation Engine | inprocess: this process
    client_cpus: int  # Ray CPUs per simulated hospital (whole CPUs, as Flower takes them); also its torch threads
    client_gpus: float  # fraction of a GPU per simulated hospital (0.25 = 4 hospitals per GPU)
    ray_address: str | None = None  # a running Ray cluster to attach to (host:port); None: a private one per run


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    seed: int
    run_dir: str | None  # null = outputs/<name>/<strategy>-<scenario>-seed<seed>-<time>
    resume: bool  # continue the run in run_dir from its last checkpoint (e.g. with more rounds)
    cache_dir: str
    device: str  # auto | cpu | cuda
    dataset: DatasetConfig
    reference: ReferenceConfig
    scenario: ScenarioConfig
    encoders: EncodersConfig
    heads: HeadsConfig
    train: TrainConfig
    missing: MissingModalityConfig
    strategy: StrategyConfig
    privacy: PrivacyConfig
    federation: FederationConfig
    simulation: SimulationConfig
    deployment: DeploymentConfig
    aggregator: AggregatorConfig = AggregatorConfig()  # configs saved before robust aggregation: the mean
    conditions: ConditionsConfig = ConditionsConfig()  # configs saved before simulated conditions: ideal
    secagg: SecAggConfig = SecAggConfig()  # configs saved before secure aggregation: off
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()  # configs saved before model selection: none

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """Build the typed config from a plain (resolved) dict; unknown keys and bad types raise ConfigError."""
    return _build(ExperimentConfig, data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The inverse of `parse_config`: plain dicts and lists, for saving next to a run."""
    data = dataclasses.asdict(cfg)
    if isinstance(cfg, ExperimentConfig):  # the strategy's options are its group's own keys again
        data["strategy"] = {key: value for key, value in data["strategy"].items() if key != "options"} | dict(
            cfg.strategy.options)
    return data


def parse_section(cls: type, data: Any, path: str) -> Any:
    """One dataclass from a plain dict, with errors naming `path.<key>` (e.g. a strategy's options)."""
    return _build(cls, data, path)


def _build(cls: type, data: Any, path: str) -> Any:
    if cls is StrategyConfig and isinstance(data, dict):  # the strategy's own keys travel as `options`
        own = {key: data[key] for key in ("name", "modality_aware") if key in data}
        data = own | {"options": {key: value for key, value in data.items() if key not in own}}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown option {where}{unknown[0]}; valid options here: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        where = f"{path}." if path else ""
        raise ConfigError(f"option {where}{missing[0]} is not set; every option needs a value, and the defaults "
                          "live in configs/ (a saved config.yaml holds them all)")
    values = {name: _convert(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path} may not be null")
        for option in options:
            if option is not type(None):
                return _convert(option, value, path)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        item_type = typing.get_args(hint)[0]
        return tuple(_convert(item_type, item, f"{path}[{index}]") for index, item in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    is_bool_as_int = hint is int and isinstance(value, bool)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not is_bool_as_int):
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    return value
