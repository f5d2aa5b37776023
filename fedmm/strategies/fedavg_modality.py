"""Modality-aware FedAvg: each head is averaged only over the hospitals that trained it.

The image head is weighted by the image samples each hospital used, the report head by the report
samples, the temperature by the pairs. A head that no sampled hospital trained keeps its global value.
This is FedAvg (McMahan et al., 2017, AISTATS) applied per parameter group,
with each group's weights counting only the samples that carried gradient into it.
"""

from flwr.app import Array, ArrayRecord, Message

from fedmm.models.heads import HeadGroup
from fedmm.strategies import messages as keys
from fedmm.strategies.aggregation import modality_weighted_average
from fedmm.strategies.fedavg import HospitalFedAvg

GROUP_COUNT_KEYS = {
    HeadGroup.IMAGE: keys.NUM_IMAGE_USED,
    HeadGroup.REPORT: keys.NUM_REPORT_USED,
    HeadGroup.TEMPERATURE: keys.NUM_PAIRED_USED,
}


class FedAvgModality(HospitalFedAvg):
    """`HospitalFedAvg` with per-head weights from the samples each hospital used for that head."""

    def aggregate_arrays(self, ordered: list[Message]) -> ArrayRecord:
        assert self.current_arrays is not None, "configure_train stores the global model first"
        current = {key: array.numpy() for key, array in self.current_arrays.items()}
        states = [{key: array.numpy() for key, array in reply.content[keys.ARRAYS].items()} for reply in ordered]
        counts = [{group: float(reply.content[keys.METRICS][key]) for group, key in GROUP_COUNT_KEYS.items()}
                  for reply in ordered]
        averaged = modality_weighted_average(current, states, counts)
        return ArrayRecord({key: Array(value) for key, value in averaged.items()})
