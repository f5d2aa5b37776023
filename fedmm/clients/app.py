"""The ClientApp: one simulated (or real) hospital. Handlers only translate Messages to tensors and back.

What a hospital keeps private across rounds (personal layers or models, its DP-SGD ledger) lives in
`context.state` under `personal` and `privacy-ledger`; it is never put in a reply.

This module imports no torch: the handlers that train, distill or evaluate import the runtime when they
run. On the Deployment Engine every message starts a fresh ClientApp process, and the SecAgg+ stages that
only exchange keys and shares then cost Flower's import (about 1 s), not torch's (about 5 s).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from fedmm import protocol as keys
from fedmm.clients.secagg import secagg_mod
from fedmm.config import ExperimentConfig

if TYPE_CHECKING:
    from fedmm.privacy.accounting import Ledger
    from fedmm.training.updates import StateDict


class ModuleClientApp(ClientApp):
    """The ClientApp `flwr run` loads (this module's `app`), pickled as a reference to it. Flower's Ray
    backend pickles the app with every message it sends to an actor; by value, the handlers' closures
    cost about 30 ms of the simulation process per message (measured with py-spy at 10 hospitals)."""

    def __reduce__(self) -> tuple:
        return module_app, ()


def module_app() -> ClientApp:
    return app


def make_client_app(cfg: ExperimentConfig | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp configured by `cfg`, or (cfg=None, as under `flwr run`) by the Flower run config.
    `mods` wrap every handler (e.g. a test's audit of what leaves the hospital)."""
    def run_cfg(context: Context) -> ExperimentConfig:
        from fedmm.run_config import config_from_run_config

        return cfg if cfg is not None else config_from_run_config(context.run_config)

    # Client-side clipping (client-level DP) must see the reply last, so it is the innermost mod; secure
    # aggregation masks what leaves the hospital, so it comes before every mod but a test's audit.
    app_type = ModuleClientApp if cfg is None and not mods else ClientApp
    app = app_type(mods=[*(mods or []), secagg_mod(run_cfg), clipping_mod(run_cfg)])

    def runtime(context: Context):
        from fedmm.clients.runtime import hospital_runtime

        # Deployment: the SuperNode's node config names the hospital's folder (`data-dir`); simulation: none.
        data_dir = context.node_config.get("data-dir")
        return hospital_runtime(run_cfg(context), int(context.node_config["partition-id"]),
                                str(data_dir) if data_dir is not None else None)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from fedmm.clients.runtime import describe

        # Discovery: tell the server which hospital this node is, so sampling can be by hospital id.
        return Message(RecordDict({keys.METRICS: MetricRecord(describe(runtime(context)))}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedmm.clients.runtime import train_round

        # 1. the global (shared) heads and the round's settings; 2. train locally, keeping what is private;
        # 3. reply with the shared heads and the counts that weight their aggregation.
        received = msg.content[keys.ARRAYS].to_torch_state_dict()
        config = msg.content[keys.CONFIG]
        server_arrays = {name: record.to_torch_state_dict() for name, record in msg.content.array_records.items()
                         if name != keys.ARRAYS}  # a strategy's further state, e.g. SCAFFOLD's control variate
        hospital = runtime(context)
        update, ledger, metrics = train_round(
            hospital,
            received,
            load_personal(context),
            int(config[keys.SERVER_ROUND]),
            dict(config),
            load_ledger(context, hospital.ledger_path),
            server_arrays,
        )
        if update.personal is not None:
            store_personal(context, update.personal)
        if ledger:
            store_ledger(context, ledger, hospital.ledger_path)
        content = RecordDict({keys.ARRAYS: ArrayRecord(update.shared), keys.METRICS: MetricRecord(metrics)}
                             | {name: ArrayRecord(arrays) for name, arrays in update.extra.items()})
        return Message(content, reply_to=msg)

    @app.train("distill")
    def distill(msg: Message, context: Context) -> Message:
        import torch

        from fedmm.clients.runtime import distill_round
        from fedmm.training.distill import ReferenceEmbeddings

        # 1. the global heads' reference embeddings; 2. train the private heads toward them;
        # 3. reply with this hospital's reference embeddings of the modalities it holds (no weights).
        arrays, config = msg.content[keys.ARRAYS], msg.content[keys.CONFIG]
        global_embeddings = ReferenceEmbeddings(
            torch.from_numpy(arrays[keys.IMAGE_EMBEDDINGS].numpy()),
            torch.from_numpy(arrays[keys.REPORT_EMBEDDINGS].numpy()),
        )
        embeddings, personal, metrics = distill_round(
            runtime(context),
            global_embeddings,
            load_personal(context),
            int(config[keys.SERVER_ROUND]),
            float(config["distill-weight"]),
        )
        store_personal(context, personal)
        sent = {
            key: Array(value.numpy())
            for key, value in ((keys.IMAGE_EMBEDDINGS, embeddings.image), (keys.REPORT_EMBEDDINGS, embeddings.report))
            if value is not None
        }
        return Message(RecordDict({keys.ARRAYS: ArrayRecord(sent), keys.METRICS: MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from fedmm.clients.runtime import evaluate_round

        metrics = evaluate_round(
            runtime(context),
            msg.content[keys.ARRAYS].to_torch_state_dict(),
            load_personal(context),
            int(msg.content[keys.CONFIG][keys.SERVER_ROUND]),
        )
        return Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


def clipping_mod(run_cfg: Callable[[Context], ExperimentConfig]) -> Mod:
    """Flower's client-side clipping mod named by `privacy.client.clipping` (client_fixed, client_adaptive),
    on training messages; every other message and setting passes through untouched."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        # Under SecAgg+ the secagg mod clips before masking (and its stage messages need no config at all).
        if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS in msg.content.config_records:
            return call_next(msg, context)
        clipping = run_cfg(context).privacy.client.clipping
        if clipping not in CLIENT_CLIPPING_MODS:
            return call_next(msg, context)
        from fedmm.strategies.client_dp import unchanged

        reply = call_next(msg, context)
        if not reply.has_error() and unchanged(reply.content[keys.ARRAYS], msg.content[keys.ARRAYS]):
            # Nothing trained: clipping a zero update is the identity, and Flower's divides by its norm.
            if clipping == "client_adaptive":
                reply.content[keys.METRICS][KEY_NORM_BIT] = 1
            return reply
        return CLIENT_CLIPPING_MODS[clipping](msg, context, lambda _msg, _context: reply)

    return mod


CLIENT_CLIPPING_MODS = {"client_fixed": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}


def load_personal(context: Context) -> StateDict | None:
    return context.state[keys.PERSONAL].to_torch_state_dict() if keys.PERSONAL in context.state else None


def store_personal(context: Context, personal: StateDict) -> None:
    context.state[keys.PERSONAL] = ArrayRecord(personal)


def load_ledger(context: Context, path: Path | None) -> Ledger:
    """This hospital's DP-SGD history over every round it trained, in this run or (from `path`, on the
    first message of a resumed run) before; it never leaves the node."""
    from fedmm.privacy.accounting import ledger_from_lists

    if keys.PRIVACY_LEDGER in context.state:
        return ledger_from_lists(dict(context.state[keys.PRIVACY_LEDGER]))
    if path is not None and path.exists():
        return ledger_from_lists(json.loads(path.read_text()))
    return ()


def store_ledger(context: Context, ledger: Ledger, path: Path | None) -> None:
    from fedmm.privacy.accounting import ledger_to_lists

    context.state[keys.PRIVACY_LEDGER] = ConfigRecord(ledger_to_lists(ledger))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(ledger_to_lists(ledger)))
        temporary.replace(path)


app = make_client_app()  # for `flwr run .` (pyproject: [tool.flwr.app.components] clientapp)

if "flwr.server.superlink.fleet.vce.vce_api" in sys.modules:  # Flower's Simulation Engine is loading this app
    from fedmm.simulation import vce_queue

    vce_queue.install()
