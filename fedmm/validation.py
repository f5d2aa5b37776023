"""Every check that can fail before any work is done, in one place."""

from fedmm.config import ConfigError, ExperimentConfig
from fedmm.data.partition import check_scenario
from fedmm.data.registry import DATASETS, check_dataset
from fedmm.hospitals import reference_dataset_config
from fedmm.models.encoders import check_image_encoder, resolve_text_encoder_path
from fedmm.privacy.client_level import check_client_privacy
from fedmm.privacy.sample_level import ON_BUDGET, SAMPLE_DP_STRATEGIES, check_sample_privacy
from fedmm.strategies import RESUMABLE, check_strategy, is_resumable
from fedmm.strategies.fedavg import sample_size
from fedmm.training.bank import OBJECTIVES, uses_reference_bank
from fedmm.training.missing import check_missing, needs_reference


def validate_config(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the option and the fix; cheap (no data, no models)."""
    check_strategy(cfg.strategy.name)
    check_strategy_options(cfg)
    check_dataset(cfg.dataset)
    check_scenario(cfg.scenario, cfg.dataset.num_samples, cfg.dataset.global_test_fraction)
    check_image_encoder(cfg.encoders.image)
    resolve_text_encoder_path(cfg.encoders.text)
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
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is unknown; valid: ['auto', 'cpu', 'cuda']")
    if cfg.simulation.client_cpus <= 0 or cfg.simulation.client_gpus < 0:
        raise ConfigError("simulation.client_cpus must be > 0 and simulation.client_gpus >= 0")
    check_privacy(cfg)
    check_missing_handler(cfg)
    if cfg.resume and not is_resumable(cfg.strategy.name):
        raise ConfigError(f"resume=true: strategy {cfg.strategy.name!r} keeps state at the hospitals or in the "
                          f"server's distillation; resuming is supported for {list(RESUMABLE)}")


def check_privacy(cfg: ExperimentConfig) -> None:
    """Unsound or impossible privacy settings and the objective they need; per-hospital plans (which need
    sample counts) are checked by `plan_all_hospitals` once the data is loaded, still before training."""
    strategy, sample = cfg.strategy.name, cfg.privacy.sample
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
        if strategy not in SAMPLE_DP_STRATEGIES:
            raise ConfigError(f"privacy.sample (DP-SGD) is wired to FedAvg's local step: strategy.name must be one "
                              f"of {list(SAMPLE_DP_STRATEGIES)}, not {strategy!r}")
    if uses_reference_bank(cfg):
        if strategy not in SAMPLE_DP_STRATEGIES:
            raise ConfigError(f"train.objective=reference_bank is wired to FedAvg's local step: strategy.name must "
                              f"be one of {list(SAMPLE_DP_STRATEGIES)}, not {strategy!r}")
        _check_reference(cfg)
        _check_positive("train.bank_size", cfg.train.bank_size)
    hospitals = cfg.scenario.num_hospitals
    check_client_privacy(cfg.privacy.client, strategy, hospitals,
                         sample_size(hospitals, cfg.federation.clients_per_round, cfg.federation.fraction_train))


def check_missing_handler(cfg: ExperimentConfig) -> None:
    """Handlers plug into the local step of the averaging and personalized strategies (`train_heads`)."""
    check_missing(cfg.missing)
    if not needs_reference(cfg.missing):
        return
    if cfg.strategy.name == "feddistill":
        raise ConfigError(f"missing.handler={cfg.missing.handler!r} does not apply to feddistill, whose unimodal "
                          "hospitals already take part through reference embeddings of the modality they hold; "
                          "use missing=ignore with feddistill")
    if uses_reference_bank(cfg):
        raise ConfigError(f"missing.handler={cfg.missing.handler!r} with train.objective=reference_bank (e.g. under "
                          "DP-SGD) is not supported: the DP-SGD step is per pair; use missing=ignore there")
    _check_reference(cfg)


def check_strategy_options(cfg: ExperimentConfig) -> None:
    strategy = cfg.strategy
    server, personal, distill = strategy.server, strategy.personal, strategy.distill
    _check_non_negative("strategy.proximal_mu", strategy.proximal_mu)
    _check_positive("strategy.server.lr", server.lr)
    _check_positive("strategy.server.tau", server.tau)
    for name, value in (("strategy.server.momentum", server.momentum), ("strategy.server.beta_1", server.beta_1),
                        ("strategy.server.beta_2", server.beta_2)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name}={value} must lie in [0, 1)")
    _check_non_negative("strategy.personal.ditto_lambda", personal.ditto_lambda)
    _check_positive("strategy.personal.head_epochs", personal.head_epochs)
    _check_positive("strategy.personal.finetune_epochs", personal.finetune_epochs)
    _check_non_negative("strategy.distill.weight", distill.weight)
    _check_positive("strategy.distill.server_epochs", distill.server_epochs)
    _check_positive("strategy.distill.server_lr", distill.server_lr)
    _check_positive("strategy.distill.chunk_size", distill.chunk_size)
    if cfg.strategy.name == "feddistill":
        _check_reference(cfg)


def _check_reference(cfg: ExperimentConfig) -> None:
    if cfg.reference.name not in DATASETS:
        raise ConfigError(f"reference.name={cfg.reference.name!r} is unknown; valid: {sorted(DATASETS)}")
    reference_dataset_config(cfg)  # refuses a reference set that would repeat hospital studies
    if cfg.reference.num_samples < 2:
        raise ConfigError(f"reference.num_samples={cfg.reference.num_samples} must be at least 2")


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name}={value} must be >= 0")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value} must be positive")
