"""Reference: every hospital's training data pooled in one place, same model and training budget.

No federation and no privacy: the upper reference a federated strategy is measured against.
The budget is the federation's, in sample passes (rows through a gradient step): round r trains
`train.local_epochs` epochs over the share of the pooled rows that a round of the federation trains on
in expectation, m/N (m hospitals sampled of N, `roster.sample_size`), drawn afresh each round. With every
hospital in every round that is the whole pool, so the budget equals the federation's exactly; with
hospitals of unequal size the federation's per-round count varies around it. summary.json's
`sample_passes` says what each run got.
"""

import torch

from fedmm import protocol as keys
from fedmm.config import ExperimentConfig
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.federation import FederatedData, SplitTensors, load_reference
from fedmm.models.heads import build_heads
from fedmm.runs.recorder import RunRecorder
from fedmm.runs.selection import server_splits
from fedmm.seeding import HEADS_INIT_STREAM, LOCAL_TRAIN_STREAM, derive_seed
from fedmm.strategies.roster import sample_size
from fedmm.strategies.spec import StrategySpec, register
from fedmm.training.local import TrainResult, train_heads
from fedmm.training.missing import handler_factory, needs_reference

POOLED = -1  # the "hospital id" under which pooled training is logged


def pool_training_data(data: FederatedData) -> SplitTensors:
    return SplitTensors.concatenate([data.hospital(h).train for h in range(data.num_hospitals)])


def run_centralized(cfg: ExperimentConfig, data: FederatedData, recorder: RunRecorder) -> dict[str, torch.Tensor]:
    heads = build_heads(data.image_dim, data.report_dim, cfg.heads, derive_seed(cfg.seed, HEADS_INIT_STREAM))
    pooled = pool_training_data(data)
    validation, global_test = server_splits(cfg, data.global_test())
    hospitals = [data.hospital(h) for h in range(data.num_hospitals)]
    prompts = Prompts.from_features(data.features)
    reference = load_reference(cfg) if needs_reference(cfg.missing) else None
    share = sample_size(data.num_hospitals, cfg.federation.clients_per_round,
                        cfg.federation.fraction_train) / data.num_hospitals
    for server_round in range(1, cfg.federation.rounds + 1):
        seed = derive_seed(cfg.seed, LOCAL_TRAIN_STREAM, server_round)
        rows = pooled if share >= 1 else round_share(pooled, share, seed)
        missing = handler_factory(cfg.missing, rows, reference, seed)
        result = train_heads(heads, rows, cfg.train, seed, missing=missing)
        train = {POOLED: reference_train_metrics(result)}
        if not is_evaluation_round(cfg, server_round):
            recorder.record(server_round, [], train)
            continue
        recorder.record(server_round, [], train, evaluate_split(heads, global_test, prompts),
                        {h.hospital_id: evaluate_split(heads, h.test, prompts) for h in hospitals},
                        validation=evaluate_split(heads, validation, prompts) if validation is not None else None,
                        state=heads.state_dict())
        if recorder.should_stop:
            break
    return heads.state_dict()


def round_share(pooled: SplitTensors, share: float, seed: int) -> SplitTensors:
    """A seeded random `share` of the pooled rows (at least one)."""
    count = max(1, round(share * len(pooled)))
    return pooled.rows(torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))[:count])


def reference_train_metrics(result: TrainResult) -> dict[str, float]:
    """What a reference run logs for one training pass, under the names a hospital's reply uses."""
    return {keys.TRAIN_LOSS: result.loss if result.steps else 0.0, keys.TRAIN_STEPS: result.steps,
            keys.TRAIN_SAMPLES: result.samples, keys.NUM_PAIRED_USED: result.num_paired_used}


def is_evaluation_round(cfg: ExperimentConfig, server_round: int) -> bool:
    return server_round % cfg.federation.evaluate_every == 0 or server_round == cfg.federation.rounds


SPEC = register(
    StrategySpec(
        name="centralized",
        description="Reference: every hospital's training data pooled; same model and budget, no federation",
        run_reference=run_centralized,
    )
)
