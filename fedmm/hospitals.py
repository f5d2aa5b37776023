"""The tensors each hospital and the server hold: features sliced by the federation's partition."""

from dataclasses import dataclass

import numpy as np
import torch

from fedmm.config import ConfigError, DatasetConfig, ExperimentConfig
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.data.partition import Federation, partition_dataset
from fedmm.data.registry import load_dataset
from fedmm.models.features import FeatureSet, load_features


@dataclass(frozen=True)
class SplitTensors:
    """One split of one holder. Rows whose modality is missing still exist but must not be read."""

    image_features: torch.Tensor  # (n, D_image)
    report_features: torch.Tensor  # (n, D_text)
    availability: torch.Tensor  # (n,) int8 codes of `Availability`
    labels: torch.Tensor  # (n, F) int8, evaluation only

    def __len__(self) -> int:
        return len(self.availability)

    def mask(self, *availabilities: Availability) -> torch.Tensor:
        """(n,) bool: rows whose availability is one of `availabilities`."""
        codes = torch.tensor([AVAILABILITY_CODES[a] for a in availabilities], dtype=torch.int8)
        return torch.isin(self.availability, codes)

    @property
    def image_mask(self) -> torch.Tensor:
        return self.mask(Availability.PAIRED, Availability.IMAGE_ONLY)

    @property
    def report_mask(self) -> torch.Tensor:
        return self.mask(Availability.PAIRED, Availability.REPORT_ONLY)

    @property
    def paired_mask(self) -> torch.Tensor:
        return self.mask(Availability.PAIRED)


@dataclass(frozen=True)
class HospitalData:
    hospital_id: int
    group: Availability
    train: SplitTensors
    test: SplitTensors


@dataclass(frozen=True)
class FederatedData:
    """Everything a run reads, built once per process: features, partition, prompts."""

    features: FeatureSet
    labels: torch.Tensor  # (N, F)
    federation: Federation

    @property
    def num_hospitals(self) -> int:
        return len(self.federation.hospitals)

    @property
    def image_dim(self) -> int:
        return self.features.image_features.shape[1]

    @property
    def report_dim(self) -> int:
        return self.features.report_features.shape[1]

    def split(self, indices: np.ndarray, availability: np.ndarray) -> SplitTensors:
        rows = torch.from_numpy(indices)
        return SplitTensors(self.features.image_features[rows], self.features.report_features[rows],
                            torch.from_numpy(availability), self.labels[rows])

    def hospital(self, hospital_id: int) -> HospitalData:
        part = self.federation.hospitals[hospital_id]
        return HospitalData(hospital_id, part.group, self.split(part.train_indices, part.train_availability),
                            self.split(part.test_indices, part.test_availability))

    def paired_counts(self) -> dict[int, int]:
        """Paired training samples per hospital: the n of each hospital's DP-SGD."""
        return {part.hospital_id: int((part.train_availability == AVAILABILITY_CODES[Availability.PAIRED]).sum())
                for part in self.federation.hospitals}

    def global_test(self) -> SplitTensors:
        indices = self.federation.global_test_indices
        paired = np.full(len(indices), AVAILABILITY_CODES[Availability.PAIRED], dtype=np.int8)
        return self.split(indices, paired)


def load_federated_data(cfg: ExperimentConfig, progress: bool = False) -> FederatedData:
    """Dataset (cached), features (cached) and the seeded partition for `cfg`."""
    dataset = load_dataset(cfg.dataset, cfg.cache_path)
    features = load_features(dataset, cfg.encoders, cfg.cache_path, cfg.device, progress)
    federation = partition_dataset(dataset.labels, cfg.scenario, cfg.dataset.global_test_fraction, cfg.seed)
    return FederatedData(features, torch.from_numpy(dataset.labels), federation)


def reference_dataset_config(cfg: ExperimentConfig) -> DatasetConfig:
    """The reference set as a dataset: `cfg.reference`'s content, drawn at the federation's image size."""
    reference = cfg.reference
    if reference.name == cfg.dataset.name and reference.seed == cfg.dataset.seed:
        raise ConfigError(f"reference.seed={reference.seed} equals dataset.seed: the reference set would repeat "
                          "hospital studies and stop being non-private; choose another reference.seed")
    return DatasetConfig(name=reference.name, num_samples=reference.num_samples, image_size=cfg.dataset.image_size,
                         seed=reference.seed, global_test_fraction=0.0)


def load_reference(cfg: ExperimentConfig, progress: bool = False) -> SplitTensors:
    """Features of the non-private reference set (every item paired), with the federation's encoders."""
    dataset = load_dataset(reference_dataset_config(cfg), cfg.cache_path)
    features = load_features(dataset, cfg.encoders, cfg.cache_path, cfg.device, progress)
    paired = torch.full((len(dataset.labels),), AVAILABILITY_CODES[Availability.PAIRED], dtype=torch.int8)
    return SplitTensors(features.image_features, features.report_features, paired, torch.from_numpy(dataset.labels))
