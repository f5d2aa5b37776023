"""Every check that can fail before any work is done, in one place."""

from fedmm.config import ConfigError, ExperimentConfig
from fedmm.data.partition import check_scenario
from fedmm.data.registry import check_dataset
from fedmm.models.encoders import check_image_encoder, resolve_text_encoder_path
from fedmm.strategies import check_strategy


def validate_config(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the option and the fix; cheap (no data, no models)."""
    check_strategy(cfg.strategy.name)
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
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is unknown; valid: ['auto', 'cpu', 'cuda']")
    if cfg.simulation.client_cpus <= 0 or cfg.simulation.client_gpus < 0:
        raise ConfigError("simulation.client_cpus must be > 0 and simulation.client_gpus >= 0")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value} must be positive")
