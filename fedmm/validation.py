"""Every check that can fail before any work is done, in one place."""

from fedmm.aggregation.robust import check_aggregator
from fedmm.clients.adversary import check_adversaries
from fedmm.config import ConfigError, ExperimentConfig
from fedmm.data.partition import check_scenario
from fedmm.data.registry import DATASETS, check_dataset
from fedmm.federation import reference_dataset_config
from fedmm.models.encoders import check_image_encoder, resolve_text_encoder_path
from fedmm.privacy.sample_level import ON_BUDGET, check_sample_privacy
from fedmm.simulation import check_engine
from fedmm.simulation.conditions import check_conditions, is_ideal
from fedmm.strategies import PrivacyMode, all_strategies, strategy_spec
from fedmm.strategies.client_dp import check_client_privacy
from fedmm.strategies.roster import SAMPLING, sample_size
from fedmm.strategies.spec import supporting
from fedmm.training.bank import OBJECTIVES, uses_reference_bank
from fedmm.training.missing import check_missing, needs_reference


def validate_config(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the option and the fix; cheap (no data, no models)."""
    spec = strategy_spec(cfg.strategy.name)
    spec.validate(cfg)  # its options, and the privacy modes, resume and aggregation it supports
    check_dataset(cfg.dataset)
    if cfg.scenario.num_hospitals is None:
        if cfg.scenario.sites is not None:
            raise ConfigError(f"scenario=natural makes one hospital per site of the dataset, and dataset.name="
                              f"{cfg.dataset.name!r} has no sites: use dataset=folder with a `site` column")
        raise ConfigError("scenario.num_hospitals is null: only scenario=natural leaves it open (one hospital per "
                          "site of the dataset); set scenario.num_hospitals")
    if cfg.scenario.sites is None and cfg.dataset.num_samples is not None:  # else: checked on the data itself
        check_scenario(cfg.scenario, cfg.dataset.num_samples, cfg.dataset.global_test_fraction)
    check_image_encoder(cfg.encoders.image)
    resolve_text_encoder_path(cfg.encoders.text)
    check_early_stopping(cfg)
    _check_positive("federation.rounds", cfg.federation.rounds)
    _check_positive("federation.evaluate_every", cfg.federation.evaluate_every)
    _check_positive("train.local_epochs", cfg.train.local_epochs)
    _check_positive("train.batch_size", cfg.train.batch_size)
    _check_positive("train.lr", cfg.train.lr)
    _check_positive("heads.embed_dim", cfg.heads.embed_dim)
    _check_positive("heads.hidden_dim", cfg.heads.hidden_dim)
    if not 0 < cfg.heads.init_temperature <= 1:
        raise ConfigError(f"heads.init_temperature={cfg.heads.init_temperature} must lie in (0, 1]")
    federation, hospitals = cfg.federation, cfg.scenario.num_hospitals
    if federation.clients_per_round is not None and not 1 <= federation.clients_per_round <= hospitals:
        raise ConfigError(
            f"federation.clients_per_round={federation.clients_per_round} must lie in [1, {hospitals}] "
            f"(scenario.num_hospitals={hospitals}); or set it to null and use federation.fraction_train"
        )
    if not 0 < federation.fraction_train <= 1:
        raise ConfigError(f"federation.fraction_train={federation.fraction_train} must lie in (0, 1]")
    if federation.min_hospitals is not None and not 1 <= federation.min_hospitals <= hospitals:
        raise ConfigError(f"federation.min_hospitals={federation.min_hospitals} must lie in [1, {hospitals}] "
                          f"(scenario.num_hospitals={hospitals}); or null to stop at the first failed hospital")
    if federation.sampling not in SAMPLING:
        raise ConfigError(f"federation.sampling={federation.sampling!r} is unknown; valid: {list(SAMPLING)}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is unknown; valid: ['auto', 'cpu', 'cuda']")
    if cfg.simulation.client_cpus <= 0 or cfg.simulation.client_gpus < 0:
        raise ConfigError("simulation.client_cpus must be > 0 and simulation.client_gpus >= 0")
    check_engine(cfg)
    check_privacy(cfg)
    check_missing_handler(cfg)
    check_aggregator(cfg.aggregator)
    check_adversaries(cfg.scenario)
    if cfg.scenario.adversaries and (spec.is_reference or spec.local_update is None):
        raise ConfigError(f"scenario.adversaries corrupt the weights a hospital sends, and {spec.name!r} "
                          f"{'runs without a federation' if spec.is_reference else 'exchanges no weights'}; "
                          "use a weight-averaging strategy (fedavg, fedprox, ...) or scenario.adversaries=[]")
    check_conditions(cfg.conditions)
    check_secagg(cfg)
    if spec.is_reference and not is_ideal(cfg.conditions):
        raise ConfigError(f"conditions={cfg.conditions.name!r} simulates hospitals that drop out or lag in a "
                          f"federation, and {spec.name!r} runs without one; use conditions=ideal")
    if spec.local_update is None and cfg.conditions.compute.samples_per_s is not None:
        raise ConfigError(f"conditions.compute (a virtual clock) times the local weight training, and {spec.name!r} "
                          "trains by distillation; set conditions.compute.samples_per_s=null (dropouts still apply)")
    if spec.needs_reference:
        _check_reference(cfg)


def check_early_stopping(cfg: ExperimentConfig) -> None:
    from fedmm.evaluation.metrics import METRICS

    settings = cfg.early_stopping
    if settings.metric is None:
        return
    if settings.metric not in METRICS or not METRICS[settings.metric].higher_is_better:
        choices = sorted(name for name, metric in METRICS.items() if metric.higher_is_better)
        raise ConfigError(f"early_stopping.metric={settings.metric!r} is not a registered metric; choose one of "
                          f"{choices}, or null for no early stopping")
    if settings.patience is not None and settings.patience < 1:
        raise ConfigError(f"early_stopping.patience={settings.patience} must be at least 1 (evaluations without "
                          "improvement), or null to run every round and only select")
    if not 0 < settings.validation_fraction < 1:
        raise ConfigError(f"early_stopping.validation_fraction={settings.validation_fraction} must lie in (0, 1): "
                          "the share of the global test pool held out for validation")


def check_secagg(cfg: ExperimentConfig) -> None:
    """Secure aggregation sums weighted updates: only for plainly averaging strategies, and in range."""
    secagg, spec = cfg.secagg, strategy_spec(cfg.strategy.name)
    if not secagg.enabled:
        return
    if not spec.robust_aggregation or spec.extra_arrays:
        raise ConfigError(f"secagg.enabled=true sums the hospitals' weighted updates, and {spec.name!r} needs "
                          f"more than their sum; strategies it runs with: "
                          f"{[s.name for s in all_strategies() if s.robust_aggregation and not s.extra_arrays]}")
    if cfg.aggregator.name != "mean":
        raise ConfigError(f"secagg.enabled=true with aggregator={cfg.aggregator.name}: a robust aggregator needs "
                          "every hospital's update, which secure aggregation hides; use aggregator=mean")
    if cfg.privacy.client.clipping not in ("none", "client_fixed"):
        raise ConfigError(f"secagg.enabled=true with privacy.client.clipping={cfg.privacy.client.clipping}: the "
                          "server sees only the sum, so it can neither clip single updates nor count the clipped "
                          "ones; clip at the hospitals with privacy.client.clipping=client_fixed")
    if secagg.threshold <= 0 or secagg.num_shares <= 0:
        raise ConfigError("secagg.num_shares and secagg.threshold must be > 0")
    if secagg.max_weight <= 0 or secagg.clipping_range <= 0:
        raise ConfigError("secagg.max_weight and secagg.clipping_range must be > 0")
    if not 2 <= secagg.quantization_range < secagg.modulus_range <= 2**32:
        raise ConfigError(f"secagg: need 2 <= quantization_range ({secagg.quantization_range}) < modulus_range "
                          f"({secagg.modulus_range}) <= 2^32")
    hospitals = cfg.scenario.num_hospitals or 0
    if hospitals * secagg.quantization_range >= secagg.modulus_range:
        raise ConfigError(f"secagg: {hospitals} hospitals' quantized sums can reach {hospitals} x quantization_range "
                          f"= {hospitals * secagg.quantization_range}, beyond modulus_range={secagg.modulus_range}; "
                          "lower secagg.quantization_range")


def check_privacy(cfg: ExperimentConfig) -> None:
    """Unsound or impossible privacy settings and the objective they need; per-hospital plans (which need
    sample counts) are checked by `plan_all_hospitals` once the data is loaded, still before training."""
    spec, sample = strategy_spec(cfg.strategy.name), cfg.privacy.sample
    if cfg.train.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective={cfg.train.objective!r} is unknown; valid: {list(OBJECTIVES)}")
    if cfg.privacy.on_budget not in ON_BUDGET:
        raise ConfigError(f"privacy.on_budget={cfg.privacy.on_budget!r} is unknown; valid: {list(ON_BUDGET)}")
    if sample.enabled:
        check_sample_privacy(sample)
        if cfg.train.objective == "in_batch":
            raise ConfigError(
                "privacy.sample.enabled=true with train.objective=in_batch is refused: with CLIP's in-batch "
                "negatives every pair also appears in the loss terms of all the others, so clipping each pair's "
                "gradient does not bound its influence and the reported ε would not hold (Logit-DP, arXiv "
                "2310.03104). Use train.objective=reference_bank (or auto): negatives from the public reference set"
            )
    if uses_reference_bank(cfg):
        if PrivacyMode.SAMPLE not in spec.privacy:
            raise ConfigError(f"train.objective=reference_bank is wired to the local step of the strategies that "
                              f"support DP-SGD, {supporting(PrivacyMode.SAMPLE)}, not {spec.name!r}")
        _check_reference(cfg)
        _check_positive("train.bank_size", cfg.train.bank_size)
    hospitals = cfg.scenario.num_hospitals
    check_client_privacy(cfg.privacy.client, hospitals,
                         sample_size(hospitals, cfg.federation.clients_per_round, cfg.federation.fraction_train),
                         cfg.federation.sampling)


def check_missing_handler(cfg: ExperimentConfig) -> None:
    """Handlers plug into the local step of the averaging and personalized strategies (`train_heads`)."""
    check_missing(cfg.missing)
    if not needs_reference(cfg.missing):
        return
    if uses_reference_bank(cfg):
        raise ConfigError(f"missing.handler={cfg.missing.handler!r} with train.objective=reference_bank (e.g. under "
                          "DP-SGD) is not supported: the DP-SGD step is per pair; use missing=ignore there")
    _check_reference(cfg)


def _check_reference(cfg: ExperimentConfig) -> None:
    if cfg.reference.name not in DATASETS:
        raise ConfigError(f"reference.name={cfg.reference.name!r} is unknown; valid: {sorted(DATASETS)}")
    reference_dataset_config(cfg)  # refuses a reference set that would repeat hospital studies
    if cfg.reference.num_samples is not None and cfg.reference.num_samples < 2:
        raise ConfigError(f"reference.num_samples={cfg.reference.num_samples} must be at least 2")


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name}={value} must be >= 0")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value} must be positive")
