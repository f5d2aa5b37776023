"""Reference: each hospital trains alone on its own data, same model and budget, no communication.

Per hospital, its own model is evaluated on its own local test split; the global-test metrics are the
mean over the hospitals' models. A hospital without pairs cannot train in the baseline, so its model
stays at the initialization.

With early stopping, each hospital is taken at its own plateau: every evaluation measures each hospital's
model on the validation split, and each hospital keeps its best round so far (its model, its global-test
and own-test metrics). What a round records is that set of best-so-far models, so its validation mean
rises whenever any hospital improves; the run stops when none has improved for `patience` evaluations,
and reports every hospital at its own selected round (`selected_rounds` in metrics.jsonl and summary.json;
each round's line also has `hospital_validation`, every hospital's current model on the selection metric).
"""

from dataclasses import dataclass

import torch

from fedmm.baselines.centralized import is_evaluation_round, reference_train_metrics
from fedmm.config import ExperimentConfig
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.federation import FederatedData, load_reference
from fedmm.models.heads import build_heads
from fedmm.runs.recorder import RunRecorder, summarize_hospitals
from fedmm.runs.selection import ModelSelection, server_splits
from fedmm.seeding import HEADS_INIT_STREAM, LOCAL_TRAIN_STREAM, derive_seed
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.local import train_heads
from fedmm.training.missing import handler_factory, needs_reference


@dataclass
class HospitalBest:
    """One hospital's model at its best validation round so far, and what it measured there."""

    selection: ModelSelection
    state: dict[str, torch.Tensor] | None = None
    validation: dict[str, float] | None = None
    global_test: dict[str, float] | None = None
    own_test: dict[str, float] | None = None

    def observe(self, server_round: int, heads, validation: dict[str, float], own_split, global_test,
                prompts: Prompts) -> None:
        """Take this round's validation metrics of `heads`; where they are the best so far, keep the heads
        and measure them on the hospital's own test split and the global test set."""
        if self.selection.observe(server_round, validation):
            self.state = {key: value.clone() for key, value in heads.state_dict().items()}
            self.validation, self.own_test = validation, evaluate_split(heads, own_split, prompts)
            self.global_test = evaluate_split(heads, global_test, prompts)


def run_local(cfg: ExperimentConfig, data: FederatedData, recorder: RunRecorder) -> dict[str, torch.Tensor]:
    hospitals = [data.hospital(h) for h in range(data.num_hospitals)]
    init_seed = derive_seed(cfg.seed, HEADS_INIT_STREAM)  # every hospital starts where the federation would
    models = [build_heads(data.image_dim, data.report_dim, cfg.heads, init_seed) for _ in hospitals]
    validation, global_test = server_splits(cfg, data.global_test())
    prompts = Prompts.from_features(data.features)
    reference = load_reference(cfg) if needs_reference(cfg.missing) else None
    bests = [HospitalBest(ModelSelection(cfg.early_stopping)) for _ in hospitals] if validation is not None else None
    for server_round in range(1, cfg.federation.rounds + 1):
        train = {}
        for hospital, heads in zip(hospitals, models):
            seed = derive_seed(cfg.seed, LOCAL_TRAIN_STREAM, server_round, hospital.hospital_id)
            missing = handler_factory(cfg.missing, hospital.train, reference, seed)
            result = train_heads(heads, hospital.train, cfg.train, seed, missing=missing)
            train[hospital.hospital_id] = reference_train_metrics(result)
        sampled = [h.hospital_id for h in hospitals]
        if not is_evaluation_round(cfg, server_round):
            recorder.record(server_round, sampled, train)
        elif bests is None:
            own_tests = {h.hospital_id: evaluate_split(m, h.test, prompts) for h, m in zip(hospitals, models)}
            recorder.record(server_round, sampled, train, mean_over(models, global_test, prompts), own_tests)
        else:
            measured_by = {}
            for hospital, heads, best in zip(hospitals, models, bests):
                measured = measured_by[str(hospital.hospital_id)] = evaluate_split(heads, validation, prompts)
                best.observe(server_round, heads, measured, hospital.test, global_test, prompts)
            recorder.record(server_round, sampled, train, mean_of([b.global_test for b in bests]),
                            {h.hospital_id: b.own_test for h, b in zip(hospitals, bests)},
                            fields={"selected_rounds": {str(h.hospital_id): b.selection.best_round
                                                        for h, b in zip(hospitals, bests)},
                                    "hospital_validation": {h: m[cfg.early_stopping.metric]
                                                            for h, m in measured_by.items()}},
                            validation=mean_of([b.validation for b in bests]),
                            state=state_of(hospitals, [b.state for b in bests]))
            if recorder.should_stop:
                break
    return state_of(hospitals, [heads.state_dict() for heads in models])


def mean_over(models: list, split, prompts: Prompts) -> dict[str, float]:
    """Each hospital's model on `split`, averaged over the hospitals (`hospital_mean`)."""
    return mean_of([evaluate_split(model, split, prompts) for model in models])


def mean_of(per_model: list[dict[str, float]]) -> dict[str, float]:
    """Metrics of several models on one split, averaged over the models that have each metric."""
    indexed = dict(enumerate(per_model))
    return summarize_hospitals(indexed, dict.fromkeys(indexed, "all"))["hospital_mean"]


def state_of(hospitals: list, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every hospital's heads in one state dict, keyed `hospital<id>.<parameter>`."""
    return {f"hospital{h.hospital_id}.{key}": value
            for h, state in zip(hospitals, states) for key, value in state.items()}


SPEC = register(
    StrategySpec(
        name="local",
        description="Reference: each hospital trains alone on its own data; no communication",
        run_reference=run_local,
    )
)
