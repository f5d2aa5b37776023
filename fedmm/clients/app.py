"""The ClientApp: one simulated (or real) hospital. Handlers only translate Messages to tensors and back."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmm.clients.hospital import describe, evaluate_round, hospital_runtime, train_round
from fedmm.config import ExperimentConfig
from fedmm.run_config import config_from_run_config
from fedmm.strategies import messages as keys


def make_client_app(cfg: ExperimentConfig | None = None) -> ClientApp:
    """A ClientApp configured by `cfg`, or (cfg=None, as under `flwr run`) by the Flower run config."""
    app = ClientApp()

    def runtime(context: Context):
        run_cfg = cfg if cfg is not None else config_from_run_config(context.run_config)
        return hospital_runtime(run_cfg, int(context.node_config["partition-id"]))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        # Discovery: tell the server which hospital this node is, so sampling can be by hospital id.
        return Message(RecordDict({keys.METRICS: MetricRecord(describe(runtime(context)))}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        hospital = runtime(context)
        state = msg.content[keys.ARRAYS].to_torch_state_dict()
        server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
        new_state, metrics = train_round(hospital, state, server_round)
        content = RecordDict({keys.ARRAYS: ArrayRecord(new_state), keys.METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = evaluate_round(runtime(context), msg.content[keys.ARRAYS].to_torch_state_dict())
        return Message(RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()  # for `flwr run .` (pyproject: [tool.flwr.app.components] clientapp)
