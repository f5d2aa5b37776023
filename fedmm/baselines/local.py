"""Reference: each hospital trains alone on its own data, same model and budget, no communication.

Per hospital, its own model is evaluated on its own local test split; the global-test metrics are the
mean over the hospitals' models (each hospital's own value is in `global_per_hospital` of metrics.jsonl).
A hospital without pairs cannot train in the baseline, so its model stays at the initialization.
"""

import torch

from fedmm.baselines.centralized import is_evaluation_round, reference_train_metrics
from fedmm.config import ExperimentConfig
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.federation import FederatedData, load_reference
from fedmm.models.heads import build_heads
from fedmm.runs.recorder import RunRecorder, summarize_hospitals
from fedmm.runs.selection import server_splits
from fedmm.seeding import HEADS_INIT_STREAM, LOCAL_TRAIN_STREAM, derive_seed
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.local import train_heads
from fedmm.training.missing import handler_factory, needs_reference


def run_local(cfg: ExperimentConfig, data: FederatedData, recorder: RunRecorder) -> dict[str, torch.Tensor]:
    hospitals = [data.hospital(h) for h in range(data.num_hospitals)]
    init_seed = derive_seed(cfg.seed, HEADS_INIT_STREAM)  # every hospital starts where the federation would
    models = [build_heads(data.image_dim, data.report_dim, cfg.heads, init_seed) for _ in hospitals]
    validation, global_test = server_splits(cfg, data.global_test())
    prompts = Prompts.from_features(data.features)
    reference = load_reference(cfg) if needs_reference(cfg.missing) else None
    for server_round in range(1, cfg.federation.rounds + 1):
        train = {}
        for hospital, heads in zip(hospitals, models):
            seed = derive_seed(cfg.seed, LOCAL_TRAIN_STREAM, server_round, hospital.hospital_id)
            missing = handler_factory(cfg.missing, hospital.train, reference, seed)
            result = train_heads(heads, hospital.train, cfg.train, seed, missing=missing)
            train[hospital.hospital_id] = reference_train_metrics(result)
        if not is_evaluation_round(cfg, server_round):
            recorder.record(server_round, [h.hospital_id for h in hospitals], train)
            continue
        own_tests = {h.hospital_id: evaluate_split(m, h.test, prompts) for h, m in zip(hospitals, models)}
        recorder.record(server_round, [h.hospital_id for h in hospitals], train,
                        mean_over(models, global_test, prompts), own_tests,
                        validation=mean_over(models, validation, prompts) if validation is not None else None,
                        state=state_of(hospitals, models))
        if recorder.should_stop:
            break
    return state_of(hospitals, models)


def mean_over(models: list, split, prompts: Prompts) -> dict[str, float]:
    """Each hospital's model on `split`, averaged over the hospitals (`hospital_mean`)."""
    per_model = {index: evaluate_split(model, split, prompts) for index, model in enumerate(models)}
    return summarize_hospitals(per_model, dict.fromkeys(per_model, "all"))["hospital_mean"]


def state_of(hospitals: list, models: list) -> dict[str, torch.Tensor]:
    return {f"hospital{h.hospital_id}.{key}": value
            for h, heads in zip(hospitals, models) for key, value in heads.state_dict().items()}


SPEC = register(
    StrategySpec(
        name="local",
        description="Reference: each hospital trains alone on its own data; no communication",
        run_reference=run_local,
    )
)
