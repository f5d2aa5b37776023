"""What a hospital does with a message, in plain PyTorch: train, distill or evaluate its heads locally.

A process builds one `Workspace` per run (the features, one set of working heads, device, strategy) and
reuses it for every message of every hospital it serves, so no message rebuilds the model or reloads
data, and a thousand hospitals cost a process no more models than one. What a hospital keeps private between
rounds (personal layers or models) is passed in and out explicitly; the ClientApp stores it in
Flower's `context.state`, which never leaves the node.
"""

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedmm import protocol as keys
from fedmm.clients.adversary import Adversary, resolve_adversaries
from fedmm.config import ExperimentConfig, config_to_dict
from fedmm.data.modality import AVAILABILITY_CODES
from fedmm.evaluation.evaluate import Prompts, evaluate_split
from fedmm.evaluation.metrics import PERSONAL_PREFIX
from fedmm.federation import (
    FOLDER_CACHE,
    FederatedData,
    HospitalData,
    SplitTensors,
    load_federated_data,
    load_hospital_folder,
    load_reference,
)
from fedmm.models.features import FeatureSet, resolve_device
from fedmm.models.heads import ContrastiveHeads, build_heads
from fedmm.privacy.accounting import Ledger, SampledGaussianSteps
from fedmm.privacy.sample_level import SamplePrivacyPlan, plan_sample_privacy
from fedmm.seeding import ADVERSARY_STREAM, FINETUNE_STREAM, HEADS_INIT_STREAM, LOCAL_TRAIN_STREAM, derive_seed
from fedmm.simulation.conditions import Clock, hospital_clock
from fedmm.strategies import StrategySpec, strategy_spec
from fedmm.training.distill import ReferenceEmbeddings, embed_reference, train_with_reference
from fedmm.training.local import TrainResult
from fedmm.training.missing import HandlerFactory, handler_factory, needs_reference
from fedmm.training.updates import LocalStep, LocalUpdate, StateDict, snapshot


@dataclass
class Workspace:
    """What every hospital of one run shares in a process: the working heads (each message loads its
    hospital's weights into them), the run's initial heads, prompts, device and strategy, the reference
    set, and each hospital's DP-SGD plan. One per process and run, however many hospitals the process
    serves, so memory does not grow with hospitals × model: per hospital it holds only its plan."""

    cfg: ExperimentConfig
    heads: ContrastiveHeads  # reused; each message loads its weights into it
    personal_heads: ContrastiveHeads  # a second model for strategies that train two (Ditto)
    initial_state: StateDict  # the run's initial heads, where private parts start
    prompts: Prompts
    device: torch.device
    strategy: StrategySpec
    options: object  # the strategy's typed options
    adversaries: dict[int, Adversary] = field(default_factory=dict)  # hospital id -> how it misbehaves
    _reference: SplitTensors | None = field(default=None, repr=False)
    _privacy_plans: dict[int, SamplePrivacyPlan | None] = field(default_factory=dict, repr=False)

    @property
    def reference(self) -> SplitTensors:
        """The non-private reference set (distillation, missing-modality retrieval), loaded on first use."""
        if self._reference is None:
            self._reference = load_reference(self.cfg)
        return self._reference

    def privacy_plan(self, data: HospitalData) -> SamplePrivacyPlan | None:
        """`data`'s hospital's DP-SGD plan (σ, q, δ, budget); None without sample-level DP or without pairs."""
        if not self.cfg.privacy.sample.enabled:
            return None
        if data.hospital_id not in self._privacy_plans:
            self._privacy_plans[data.hospital_id] = plan_sample_privacy(
                self.cfg, int(data.train.paired_mask.sum()), data.hospital_id)
        return self._privacy_plans[data.hospital_id]


@dataclass
class HospitalRuntime:
    """One hospital as one message sees it: the process's shared `Workspace` and this hospital's data."""

    workspace: Workspace
    data: HospitalData
    data_dir: Path | None = None  # the hospital's folder under the Deployment Engine; None: simulated

    @property
    def cfg(self) -> ExperimentConfig:
        return self.workspace.cfg

    @property
    def heads(self) -> ContrastiveHeads:
        return self.workspace.heads

    @property
    def initial_state(self) -> StateDict:
        return self.workspace.initial_state

    @property
    def prompts(self) -> Prompts:
        return self.workspace.prompts

    @property
    def device(self) -> torch.device:
        return self.workspace.device

    @property
    def strategy(self) -> StrategySpec:
        return self.workspace.strategy

    @property
    def reference(self) -> SplitTensors:
        return self.workspace.reference

    @property
    def privacy_plan(self) -> SamplePrivacyPlan | None:
        return self.workspace.privacy_plan(self.data)

    @property
    def adversary(self) -> Adversary | None:
        """How this hospital misbehaves (`scenario.adversaries`); None: it is honest."""
        return self.workspace.adversaries.get(self.data.hospital_id)

    def training_data(self, seed: int) -> SplitTensors:
        """The split it trains on: its own, or what a faulty pipeline (`shuffled_pairs`) makes of it."""
        return self.adversary.training_data(self.data.train, seed) if self.adversary else self.data.train

    def missing_handler(self, data: SplitTensors, seed: int) -> HandlerFactory | None:
        """The missing-modality handler for a training on `data` seeded with `seed` (None: pairs only)."""
        reference = self.reference if needs_reference(self.cfg.missing) else None
        return handler_factory(self.cfg.missing, data, reference, seed)

    @property
    def ledger_path(self) -> Path | None:
        """Where this hospital keeps its DP-SGD ledger between runs (a resumed run reads it back): its
        folder under the run directory in simulation; in deployment, its own folder, one ledger per run
        directory. None (no run_dir named): only in Flower's context.state."""
        if self.cfg.run_dir is None:
            return None
        if self.data_dir is not None:
            run = hashlib.sha256(str(self.cfg.run_dir).encode()).hexdigest()[:16]
            return self.data_dir / FOLDER_CACHE / "privacy-ledgers" / f"{run}.json"
        return Path(self.cfg.run_dir) / "hospitals" / str(self.data.hospital_id) / "privacy-ledger.json"

    def step(self, stream: int, server_round: int, round_config: Mapping | None = None,
             server_arrays: Mapping[str, StateDict] | None = None, clock: Clock | None = None) -> LocalStep:
        """What the strategy's local update (or personal model) works with, seeded for (stream, round)."""
        seed = self.seed(stream, server_round)
        plan = self.privacy_plan
        shared = self.workspace
        data = self.training_data(seed)
        return LocalStep(self.cfg, shared.options, shared.heads, shared.personal_heads, shared.initial_state,
                         data, seed, self.device, self.missing_handler(data, seed), dict(round_config or {}),
                         lambda: shared.reference, plan.dpsgd if plan is not None else None,
                         dict(server_arrays or {}), clock)

    def seed(self, stream: int, server_round: int) -> int:
        return derive_seed(self.cfg.seed, stream, server_round, self.data.hospital_id)


# Process-wide, per run (config digest): built on a process's first message, reused by every later one.
_DATA: dict[str, FederatedData] = {}  # simulation: the features once and the partition's row indices
_FOLDERS: dict[tuple[str, str], tuple[HospitalData, FeatureSet]] = {}  # deployment: the node's own folder
_WORKSPACES: dict[tuple[str, str | None], Workspace] = {}


def config_digest(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def hospital_runtime(cfg: ExperimentConfig, hospital_id: int, data_dir: str | None = None) -> HospitalRuntime:
    """Hospital `hospital_id` under `cfg`, for one message: its rows of the simulated partition, or
    (`data_dir`, a SuperNode's node config under the Deployment Engine) its own folder, whose feature
    cache is built there on first use and reused after. Everything else is the process's `Workspace`."""
    digest = config_digest(cfg)
    if data_dir is None:
        hospital, features = simulated_hospital(cfg, hospital_id, digest)
    else:
        if (digest, data_dir) not in _FOLDERS:
            _FOLDERS[digest, data_dir] = load_hospital_folder(cfg, Path(data_dir), hospital_id)
        hospital, features = _FOLDERS[digest, data_dir]
    if (digest, data_dir) not in _WORKSPACES:
        _WORKSPACES[digest, data_dir] = build_workspace(cfg, features, simulated=data_dir is None)
    return HospitalRuntime(_WORKSPACES[digest, data_dir], hospital, Path(data_dir) if data_dir is not None else None)


def build_workspace(cfg: ExperimentConfig, features: FeatureSet, simulated: bool) -> Workspace:
    if simulated:  # one simulated hospital gets `client_cpus` cores; more torch threads would oversubscribe them
        torch.set_num_threads(cfg.simulation.client_cpus)
    device = resolve_device(cfg.device if cfg.simulation.client_gpus > 0 or cfg.device == "cuda" else "cpu")
    image_dim, report_dim = features.image_features.shape[1], features.report_features.shape[1]
    initial = build_heads(image_dim, report_dim, cfg.heads, derive_seed(cfg.seed, HEADS_INIT_STREAM))
    spec = strategy_spec(cfg.strategy.name)
    return Workspace(cfg, build_heads(image_dim, report_dim, cfg.heads, seed=0).to(device),
                     build_heads(image_dim, report_dim, cfg.heads, seed=0).to(device), snapshot(initial),
                     Prompts.from_features(features), device, spec, spec.parse_options(cfg),
                     resolve_adversaries(cfg.scenario, cfg.seed))


def simulated_hospital(cfg: ExperimentConfig, hospital_id: int,
                       digest: str | None = None) -> tuple[HospitalData, FeatureSet]:
    """Hospital `hospital_id`'s slice of the simulated federation (the federation is loaded once per
    process and config; the slice, a copy of the hospital's rows, lives as long as the message)."""
    digest = digest or config_digest(cfg)
    if digest not in _DATA:
        _DATA[digest] = load_federated_data(cfg)
    data = _DATA[digest]
    if not 0 <= hospital_id < data.num_hospitals:
        raise ValueError(f"partition-id {hospital_id} is outside the federation's {data.num_hospitals} hospitals")
    return data.hospital(hospital_id), data.features


def describe(runtime: HospitalRuntime) -> dict[str, float]:
    """The hospital's id and sample counts, as answered to the server's discovery query."""
    train = runtime.data.train
    return {
        keys.HOSPITAL_ID: runtime.data.hospital_id,
        keys.NUM_EXAMPLES: len(train),
        keys.GROUP: AVAILABILITY_CODES[runtime.data.group],
        "num-paired": int(train.paired_mask.sum()),
        "num-image": int(train.image_mask.sum()),
        "num-report": int(train.report_mask.sum()),
    }


def train_metrics(runtime: HospitalRuntime, result: TrainResult) -> dict[str, float]:
    metrics = {
        keys.HOSPITAL_ID: runtime.data.hospital_id,
        keys.NUM_EXAMPLES: len(runtime.data.train),
        keys.NUM_PAIRED_USED: result.num_paired_used,
        keys.NUM_IMAGE_USED: result.num_image_used,
        keys.NUM_REPORT_USED: result.num_report_used,
        keys.TRAIN_STEPS: result.steps,
        keys.TRAIN_SAMPLES: result.samples,
    }
    if not result.steps:
        metrics[keys.TRAIN_LOSS] = 0.0
    elif not math.isnan(result.loss):  # DP-SGD does not publish its private loss
        metrics[keys.TRAIN_LOSS] = result.loss
    return metrics


def privacy_metrics(plan: SamplePrivacyPlan | None, ledger: Ledger, exhausted: bool = False) -> dict[str, float]:
    """Cumulative sample-level ε over every round this hospital trained (0 for one that never trains)."""
    if plan is None:
        return {keys.DP_EPSILON: 0.0, keys.PRIVACY_EXHAUSTED: 0}
    return {
        keys.DP_EPSILON: plan.epsilon(ledger),
        keys.DP_DELTA: plan.delta,
        keys.DP_NOISE_MULTIPLIER: plan.dpsgd.noise_multiplier,
        keys.DP_STEPS: sum(e.steps for e in ledger),
        keys.PRIVACY_EXHAUSTED: int(exhausted),
    }


def train_round(
    runtime: HospitalRuntime,
    received: StateDict,
    personal: StateDict | None,
    server_round: int,
    round_config: Mapping | None = None,
    ledger: Ledger = (),
    server_arrays: Mapping[str, StateDict] | None = None,
) -> tuple[LocalUpdate, Ledger, dict[str, float]]:
    """The strategy's local update from the server's `received` arrays (and `round_config`, what came with
    them, and `server_arrays`, further named arrays such as SCAFFOLD's control variate) and this hospital's
    private `personal` state. `ledger`: this hospital's DP-SGD history (sample-level DP). A hospital named
    in `scenario.adversaries` then corrupts what it sends (`fedmm.clients.adversary`). Returns the update
    (what to send, what to keep), the new ledger and the reply metrics. A hospital whose next round would
    pass its privacy budget does not train: it sends the received arrays back and says so
    (`privacy-exhausted`). Under `conditions.compute` the training runs on a virtual clock: what fits before
    the deadline is sent (`late=partial`), or, past it, nothing (`late`: the received arrays go back, the
    private state and ledger stay as they were, as if the hospital had not taken part)."""
    plan = runtime.privacy_plan
    if plan is not None and plan.would_exceed(ledger):
        idle = LocalUpdate(received, personal, TrainResult.idle())
        return idle, ledger, train_metrics(runtime, idle.result) | privacy_metrics(plan, ledger, exhausted=True)
    if runtime.strategy.local_update is None:
        raise ValueError(
            f"strategy {runtime.strategy.name!r} does not train from weights; its hospitals answer "
            f"{runtime.strategy.exchanges.value} messages"
        )
    clock = hospital_clock(runtime.cfg.conditions, runtime.cfg.seed, runtime.data.hospital_id)
    step = runtime.step(LOCAL_TRAIN_STREAM, server_round, round_config, server_arrays, clock)
    update = runtime.strategy.local_update(step, received, personal)
    if clock is not None and clock.cut and (runtime.cfg.conditions.late == "drop" or update.result.steps == 0):
        idle = LocalUpdate(received, personal, TrainResult.idle())
        late = {keys.LATE: 1, keys.TRAIN_TIME: clock.elapsed_s}
        if runtime.cfg.privacy.sample.enabled:
            late |= privacy_metrics(plan, ledger)
        return idle, ledger, train_metrics(runtime, idle.result) | late
    if runtime.adversary is not None:
        update.shared = runtime.adversary.corrupt(update.shared, received, runtime.initial_state,
                                                  runtime.seed(ADVERSARY_STREAM, server_round))
    metrics = train_metrics(runtime, update.result) | update.metrics
    if clock is not None:
        metrics |= {keys.LATE: 0, keys.TRAIN_TIME: clock.elapsed_s}
    if runtime.cfg.privacy.sample.enabled:
        if plan is not None:
            ledger = ledger + (
                SampledGaussianSteps(plan.dpsgd.noise_multiplier, plan.dpsgd.sample_rate, update.result.steps),
            )
        metrics |= privacy_metrics(plan, ledger)
    return update, ledger, metrics


def distill_round(
    runtime: HospitalRuntime,
    global_embeddings: ReferenceEmbeddings,
    personal: StateDict | None,
    server_round: int,
    weight: float,
) -> tuple[ReferenceEmbeddings, StateDict, dict[str, float]]:
    """Federated distillation: train the private heads, return their reference embeddings of the
    modalities this hospital holds, the new private heads (kept) and the reply metrics."""
    heads, data = runtime.heads, runtime.data.train
    heads.load_state_dict(personal if personal is not None else runtime.initial_state)
    result = train_with_reference(
        heads,
        data,
        runtime.reference,
        global_embeddings,
        runtime.cfg.train,
        weight,
        runtime.seed(LOCAL_TRAIN_STREAM, server_round),
        runtime.device,
    )
    embeddings = embed_reference(
        heads, runtime.reference, image=bool(data.image_mask.any()), report=bool(data.report_mask.any())
    )
    return embeddings, snapshot(heads), train_metrics(runtime, result)


def evaluate_round(
    runtime: HospitalRuntime, received: StateDict, personal: StateDict | None, server_round: int
) -> dict[str, float]:
    """Metrics on this hospital's local test split: of the global heads (when the server has a complete
    model) and, for strategies with a personal model, of this hospital's own model (prefixed `personal_`)."""
    metrics: dict[str, float] = {keys.HOSPITAL_ID: runtime.data.hospital_id, keys.NUM_EXAMPLES: len(runtime.data.test)}
    if set(received) == set(runtime.initial_state):
        runtime.heads.load_state_dict(received)
        metrics.update(evaluate_split(runtime.heads, runtime.data.test, runtime.prompts))
    if runtime.strategy.personal_model is not None:
        # The model this hospital would use itself; seeded on its own stream where building it trains.
        own = runtime.strategy.personal_model(runtime.step(FINETUNE_STREAM, server_round), received, personal)
        own_metrics = evaluate_split(own, runtime.data.test, runtime.prompts)
        metrics.update(
            {PERSONAL_PREFIX + name: value for name, value in own_metrics.items() if not name.startswith("num_")}
        )
    return metrics
