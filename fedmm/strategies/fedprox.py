"""FedProx: FedAvg whose hospitals add a proximal term (μ/2)·||w - w_global||² to their local objective.

Li et al., 2020, "Federated Optimization in Heterogeneous Networks" (MLSys). As in Flower's `FedProx`,
the server's only change is to send μ in the train config (`proximal-mu`); the hospital adds the term
(`fedmm.training.regularizers.proximal_term`), which keeps its heads near the global ones when its data
(or its modality mix) pulls them elsewhere.
"""

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedmm.strategies import messages as keys
from fedmm.strategies.fedavg import HospitalFedAvg


class FedProx(HospitalFedAvg):
    def __init__(self, *args, proximal_mu: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proximal_mu = proximal_mu

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[keys.PROXIMAL_MU] = self.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)
