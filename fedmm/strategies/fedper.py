"""The server side of FedPer and FedRep: only the shared base of the heads is averaged.

FedPer: Arivazhagan et al., 2019, "Federated Learning with Personalization Layers" (arXiv:1912.00818).
FedRep: Collins et al., 2021, "Exploiting Shared Representations for Personalized Federated Learning"
(ICML). Both keep the final layer of each head private (`fedmm.models.heads.PERSONAL_LAYER_PREFIXES`);
they differ only in how a hospital trains (`fedmm.training.personalized`). The server never holds a
complete model, so there is no global-test evaluation: each hospital's own model is judged on its
own test split.
"""

from collections.abc import Mapping

from flwr.app import ArrayRecord

from fedmm.models.heads import is_personal_layer
from fedmm.strategies.fedavg import HospitalFedAvg


class SharedBaseFedAvg(HospitalFedAvg):
    """Modality-aware FedAvg over the shared base; the final layers never reach the server."""

    has_global_model = False

    def initial_arrays(self, heads_state: Mapping) -> ArrayRecord:
        return ArrayRecord({key: value for key, value in heads_state.items() if not is_personal_layer(key)})
