"""Reference: every hospital's training data pooled in one place, same model and training budget.

No federation and no privacy: the upper reference a federated strategy is measured against.
Round r trains `train.local_epochs` epochs over the pooled data, so the budget in epochs equals a
federated run in which every hospital takes part in every round.
"""

import torch

from fedmm.config import ExperimentConfig
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.federation import FederatedData, SplitTensors, load_reference
from fedmm.models.heads import build_heads
from fedmm.runs.recorder import RunRecorder
from fedmm.seeding import HEADS_INIT_STREAM, LOCAL_TRAIN_STREAM, derive_seed
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.local import train_heads
from fedmm.training.missing import handler_factory, needs_reference

POOLED = -1  # the "hospital id" under which pooled training is logged


def pool_training_data(data: FederatedData) -> SplitTensors:
    splits = [data.hospital(h).train for h in range(data.num_hospitals)]
    return SplitTensors(*(torch.cat([getattr(split, name) for split in splits])
                          for name in ("image_features", "report_features", "availability", "labels")))


def run_centralized(cfg: ExperimentConfig, data: FederatedData, recorder: RunRecorder) -> dict[str, torch.Tensor]:
    heads = build_heads(data.image_dim, data.report_dim, cfg.heads, derive_seed(cfg.seed, HEADS_INIT_STREAM))
    pooled, global_test = pool_training_data(data), data.global_test()
    hospitals = [data.hospital(h) for h in range(data.num_hospitals)]
    prompts = Prompts.from_features(data.features)
    reference = load_reference(cfg) if needs_reference(cfg.missing) else None
    for server_round in range(1, cfg.federation.rounds + 1):
        seed = derive_seed(cfg.seed, LOCAL_TRAIN_STREAM, server_round)
        missing = handler_factory(cfg.missing, pooled, reference, seed)
        result = train_heads(heads, pooled, cfg.train, seed, missing=missing)
        train = {POOLED: {"train-loss": result.loss if result.steps else 0.0, "train-steps": result.steps,
                          "num-paired-used": result.num_paired_used}}
        if is_evaluation_round(cfg, server_round):
            recorder.record(server_round, [], train, evaluate_split(heads, global_test, prompts),
                            {h.hospital_id: evaluate_split(heads, h.test, prompts) for h in hospitals})
        else:
            recorder.record(server_round, [], train)
    return heads.state_dict()


def is_evaluation_round(cfg: ExperimentConfig, server_round: int) -> bool:
    return server_round % cfg.federation.evaluate_every == 0 or server_round == cfg.federation.rounds


SPEC = register(
    StrategySpec(
        name="centralized",
        description="Reference: every hospital's training data pooled; same model and budget, no federation",
        run_reference=run_centralized,
    )
)
