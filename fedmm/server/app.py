"""The ServerApp: the same object under `fedmm run` (Simulation Engine) and `flwr run` (either engine)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmm.config import ExperimentConfig
from fedmm.run_config import config_from_run_config
from fedmm.runs.recorder import RoundCallback
from fedmm.server.federated import run_federated


def make_server_app(cfg: ExperimentConfig | None = None, on_round: RoundCallback | None = None,
                    results: list | None = None) -> ServerApp:
    """A ServerApp configured by `cfg`, or (cfg=None, as under `flwr run`) by the Flower run config.
    The run's summary is appended to `results` when given."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg if cfg is not None else config_from_run_config(context.run_config)
        summary = run_federated(grid, run_cfg, on_round)
        if results is not None:
            results.append(summary)

    return app


app = make_server_app()  # for `flwr run .` (pyproject: [tool.flwr.app.components] serverapp)
