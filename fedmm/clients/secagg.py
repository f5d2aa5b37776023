"""A hospital's side of SecAgg+ (Bell et al., 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS), as a mod on its training messages. The server's side and why this bridge exists:
`fedmm.strategies.secagg`.

The protocol's four stages are Flower's own client code (`flwr.client.mod.secure_aggregation.secaggplus_mod`:
key generation, Shamir shares of the mask seeds, pairwise and self masks, unmasking shares), driven by the
Message API: what the hospital masks is `fedmm.aggregation.secure.hospital_vector` of its training reply, and
the reply then carries the masked vector and no arrays. Under client-level DP (`client_fixed`) the update
is clipped to norm C here, by Flower's `compute_clip_model_update` (what its `fixedclipping_mod` does), before
it is masked, and every hospital weighs 1. Its metrics keep only what the server sees anyway
(which hospital answered, and when: late, over budget, its virtual time) and its sample-level ε.
"""

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _collect_masked_vectors,
    _setup,
    _share_keys,
    _unmask,
    check_configs,
    check_stage,
)
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.supercore.differential_privacy import compute_clip_model_update

from fedmm import protocol as keys
from fedmm.config import ExperimentConfig
from fedmm.protocol import without_update
from fedmm.seeding import SECAGG_STREAM, derive_seed

PUBLIC_METRICS = (keys.HOSPITAL_ID, keys.LATE, keys.TRAIN_TIME, keys.PRIVACY_EXHAUSTED)  # kept in a masked reply


def reply_weights(metrics: MetricRecord, cfg: ExperimentConfig) -> dict:
    """The hospital's weight per head group, as the plain average would use it (0: no update; 1 under
    client-level DP, whose average counts every hospital once)."""
    from fedmm.models.heads import HeadGroup
    from fedmm.strategies.base import GROUP_COUNT_KEYS

    if without_update(metrics):
        return {}
    if cfg.privacy.client.clipping != "none":
        return dict.fromkeys(HeadGroup, 1.0)
    if cfg.strategy.modality_aware:
        return {group: float(metrics[key]) for group, key in GROUP_COUNT_KEYS.items()}
    return dict.fromkeys(HeadGroup, float(metrics[keys.NUM_EXAMPLES]))


def secagg_mod(run_cfg: Callable[[Context], ExperimentConfig]) -> Mod:
    """Handles the SecAgg+ stages of training messages that carry them; every other message passes through."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
            return call_next(msg, context)
        state = SecAggPlusState(**context.state.config_records.get(RECORD_KEY_STATE, ConfigRecord()))
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        check_stage(state.current_stage, configs)
        state.current_stage = str(configs.pop(Key.STAGE))
        check_configs(state.current_stage, configs)
        content = RecordDict()
        if state.current_stage == Stage.SETUP:
            state.nid = msg.metadata.dst_node_id
            result = _setup(state, configs)
        elif state.current_stage == Stage.SHARE_KEYS:
            result = _share_keys(state, configs)
        elif state.current_stage == Stage.COLLECT_MASKED_VECTORS:
            from fedmm.aggregation.secure import hospital_vector  # torch: only where a hospital trains

            reply = call_next(msg, context)
            if reply.has_error():
                return reply
            cfg = run_cfg(context)
            metrics = reply.content[keys.METRICS]
            received = {key: array.numpy() for key, array in msg.content[keys.ARRAYS].items()}
            shared = {key: array.numpy() for key, array in reply.content[keys.ARRAYS].items()}
            moved = any(not np.array_equal(shared[key], received[key]) for key in received)
            if cfg.privacy.client.clipping == "client_fixed" and moved:  # Flower's clipping of the update to norm C
                clipped = [shared[key].copy() for key in received]
                compute_clip_model_update(clipped, list(received.values()), cfg.privacy.client.clipping_norm)
                shared = dict(zip(received, clipped))
            vector = hospital_vector(shared, received, reply_weights(metrics, cfg), state.max_weight)
            # Flower's stochastic rounding draws from numpy's global generator: seed it from the run, so a rerun
            # sends the same quantized update (the masks are fresh randomness and cancel exactly).
            server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
            np.random.seed(derive_seed(cfg.seed, SECAGG_STREAM, server_round, int(metrics[keys.HOSPITAL_ID])) % 2**32)
            result = _collect_masked_vectors(state, configs, state.max_weight, ndarrays_to_parameters(vector))
            public = {key: value for key, value in metrics.items()
                      if key in PUBLIC_METRICS or key.startswith(("dp-", "privacy-"))}
            content = RecordDict({keys.METRICS: MetricRecord(public)})
        else:
            result = _unmask(state, configs)
        context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(result, False)
        return Message(content, reply_to=msg)

    return mod
