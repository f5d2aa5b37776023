"""The experiment configuration: composed by Hydra from `configs/`, parsed once into typed dataclasses.

Every function takes the part it needs (`cfg.scenario`, `cfg.train`), never a raw dict or a Flower
Context. Parsing rejects unknown keys and wrong types with the dotted name of the option.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration a run cannot start from; the message names the option and the fix."""


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synthetic_cxr"
    num_samples: int = 4000
    image_size: int = 128  # px; the generator draws 64-256
    seed: int = 0  # the content's seed, separate from the run's seed: runs with other seeds share one dataset
    global_test_fraction: float = 0.2  # held by the server; no hospital trains on it


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

    unimodal: float = 0.0  # share of hospitals that hold one modality only
    image_only_fraction: float = 0.5  # of those, the share with images only; the rest hold reports only


@dataclass(frozen=True)
class MissingRateConfig:
    """Per-study missing modality inside each paired hospital (knob form, used when `profiles` is empty)."""

    image: float = 0.0  # rate (fixed) or mean rate (beta) at which a study lacks its image
    report: float = 0.0  # ... lacks its report
    distribution: str = "fixed"  # fixed: every paired hospital has these rates | beta: each draws its own
    concentration: float = 10.0  # beta: a + b of Beta(mean·c, (1 - mean)·c); higher: hospitals closer to the mean


@dataclass(frozen=True)
class ScenarioConfig:
    name: str = "balanced"
    num_hospitals: int = 4
    sample_skew: float = 0.0  # hospital sizes ∝ rank^-skew; 0 = equal sizes
    dirichlet_alpha: float | None = None  # finding mix per hospital ~ Dir(alpha * global mix); null = IID
    local_test_fraction: float = 0.2
    # Either explicit profiles, or (when empty) the knobs below.
    profiles: tuple[ModalityProfile, ...] = ()
    hospital_mix: HospitalMixConfig = field(default_factory=HospitalMixConfig)
    missing_rate: MissingRateConfig = field(default_factory=MissingRateConfig)


@dataclass(frozen=True)
class ImageEncoderConfig:
    name: str = "resnet18"
    weights: str | None = None  # a local state_dict file; null = seeded random init (nothing is downloaded)
    init_seed: int = 0
    pooling: str = "grid2"
    input_size: int = 128
    batch_size: int = 64


@dataclass(frozen=True)
class TextEncoderConfig:
    name: str = "minilm"
    path: str | None = None  # a local Hugging Face model directory; null = the packaged MiniLM
    max_tokens: int = 128
    batch_size: int = 64


@dataclass(frozen=True)
class EncodersConfig:
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)


@dataclass(frozen=True)
class HeadsConfig:
    hidden_dim: int = 512
    embed_dim: int = 128
    init_temperature: float = 0.07  # CLIP's initial softmax temperature; learnable


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    objective: str = "auto"  # in_batch | reference_bank | auto (reference_bank exactly when privacy.sample is on)
    bank_size: int = 64  # reference_bank: negatives per step, drawn from the non-private reference set


@dataclass(frozen=True)
class MissingModalityConfig:
    """How image-only and report-only samples take part in a hospital's local training.

    ignore: only pairs train (the baseline); prototype: prototype anchoring; retrieval: retrieval
    imputation of the missing side from the reference set (see `fedmm.training.missing`)."""

    handler: str = "ignore"  # ignore | prototype | retrieval
    weight: float = 1.0  # prototype: weight of the unimodal term next to the pairs' InfoNCE
    num_prototypes: int = 16  # prototype: k-means clusters of the reference set; more: finer, noisier targets
    temperature: float = 0.1  # prototype: softmax temperature over the prototypes (fixed, not learned)
    retrieval_k: int = 1  # retrieval: reference neighbours whose other side is averaged into the imputed features


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """Server-side update from the averaged pseudo-gradient (fedavgm, fedadam, fedyogi)."""

    lr: float = 1.0  # η, the server learning rate
    momentum: float = 0.0  # FedAvgM's β
    beta_1: float = 0.9  # FedAdam/FedYogi first-moment decay
    beta_2: float = 0.99  # second-moment decay
    tau: float = 1e-3  # adaptivity: larger tau, closer to plain momentum SGD


@dataclass(frozen=True)
class PersonalConfig:
    """Personalized strategies (fedper, fedrep, ditto, finetune)."""

    ditto_lambda: float = 0.1  # Ditto's pull of the personal model toward the global one
    head_epochs: int = 2  # FedRep: epochs on the private final layers before the shared base
    finetune_epochs: int = 1  # finetune: local epochs on the global heads before evaluating them


@dataclass(frozen=True)
class DistillConfig:
    """Federated distillation on the reference set (`feddistill`)."""

    weight: float = 1.0  # client pull of its reference embeddings toward the global ones
    server_epochs: int = 2  # epochs over the reference set when distilling the ensemble into the global heads
    server_lr: float = 1e-3
    quality_weighting: bool = True  # weight each hospital by its reference-set alignment (CreamFL-style)
    chunk_size: int = 256  # rows per similarity block; memory ~ chunk_size^2, whatever the reference size


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg_modality"
    proximal_mu: float = 0.0  # FedProx's μ: weight of (μ/2)·||w - w_global||² in the local objective
    server: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    personal: PersonalConfig = field(default_factory=PersonalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass(frozen=True)
class ReferenceConfig:
    """A non-private dataset the server and every hospital may read (distillation targets).

    Generated like `dataset` but from its own content seed, so no study is any hospital's."""

    name: str = "synthetic_cxr"
    num_samples: int = 1000
    seed: int = 1  # content seed; must differ from dataset.seed so no hospital study is in it


@dataclass(frozen=True)
class SampleDPConfig:
    """Sample-level DP inside each hospital: DP-SGD through Opacus (per-sample clipping, Gaussian noise,
    Poisson sampling). Set `noise_multiplier` or `target_epsilon`, not both."""

    enabled: bool = False
    noise_multiplier: float | None = None  # σ: noise std / max_grad_norm
    target_epsilon: float | None = None  # ε after every planned round; each hospital derives its σ from it
    delta: float | None = None  # null: 1/(10·n) for the hospital's n paired training samples
    max_grad_norm: float = 1.0  # C: every sample's gradient is clipped to this L2 norm
    max_epsilon: float | None = None  # the budget; null: target_epsilon (with a noise multiplier: no budget)


@dataclass(frozen=True)
class ClientDPConfig:
    """Client-level DP across the federation: one of Flower's DP strategy wrappers (central noise)."""

    clipping: str = "none"  # none | server_fixed | server_adaptive | client_fixed | client_adaptive
    noise_multiplier: float = 1.0  # z: noise std / clipping norm on the summed updates
    clipping_norm: float = 1.0  # fixed: the L2 bound on a hospital's update; adaptive: the initial bound
    target_quantile: float = 0.5  # adaptive: the share of updates left unclipped
    clip_norm_lr: float = 0.2  # adaptive: geometric step of the bound per round
    clipped_count_stddev: float | None = None  # adaptive: noise on the unclipped count; null: sampled/20
    delta: float = 1e-5  # must be below 1/num_hospitals
    max_epsilon: float | None = None  # per-hospital budget; null: none


@dataclass(frozen=True)
class PrivacyConfig:
    sample: SampleDPConfig = field(default_factory=SampleDPConfig)
    client: ClientDPConfig = field(default_factory=ClientDPConfig)
    on_budget: str = "stop_hospital"  # stop_hospital: it trains no more | stop_run: the run ends there


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = 20
    clients_per_round: int | None = None  # a count; wins over fraction_train when set
    fraction_train: float = 1.0
    evaluate_every: int = 2  # rounds between evaluations; the last round is always evaluated
    round_timeout_s: float = 600.0
    # Hospitals that must remain for the run to go on when some fail (a node that dies, an error reply);
    # null: every hospital (the first failure stops the run). Finished rounds are kept either way.
    min_hospitals: int | None = None


@dataclass(frozen=True)
class DeploymentConfig:
    """Flower's Deployment Engine: each SuperNode reads its own hospital folder (node config `data-dir`)."""

    server_test_dir: str | None = None  # the server's global test set as a hospital folder; null: simulated


@dataclass(frozen=True)
class SimulationConfig:
    client_cpus: float = 1.0  # Ray CPUs per simulated hospital; also its torch thread count
    client_gpus: float = 0.0  # fraction of a GPU per simulated hospital (0.25 = 4 hospitals per GPU)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    run_dir: str | None = None  # null = outputs/<name>/<strategy>-<scenario>-seed<seed>-<time>
    resume: bool = False  # continue the run in run_dir from its last checkpoint (e.g. with more rounds)
    cache_dir: str = ".cache/fedmm"
    device: str = "auto"  # auto | cpu | cuda
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    missing: MissingModalityConfig = field(default_factory=MissingModalityConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """Build the typed config from a plain (resolved) dict; unknown keys and bad types raise ConfigError."""
    return _build(ExperimentConfig, data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The inverse of `parse_config`: plain dicts and lists, for saving next to a run."""
    return dataclasses.asdict(cfg)


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown option {where}{unknown[0]}; valid options here: {sorted(names)}")
    values = {name: _convert(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{path or 'config'}: {error}") from error


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
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    return value
