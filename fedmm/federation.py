"""The tensors each hospital and the server hold: features sliced by the federation's partition
(simulation), or read from a hospital folder on disk (deployment: one folder per node, see
`fedmm.data.hospital_folder`)."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmm.config import ConfigError, DatasetConfig, ExperimentConfig, SitesConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.findings import FINDING_NAMES
from fedmm.data.folder_dataset import read_folder
from fedmm.data.hospital_folder import FOLDER_FINDINGS
from fedmm.data.modality import AVAILABILITY_CODES, Availability
from fedmm.data.partition import Federation, StudyFacts, partition_dataset, partition_studies, site_hospitals
from fedmm.data.registry import load_dataset
from fedmm.models.features import FeatureSet, load_features

FOLDER_CACHE = ".fedmm-cache"  # a hospital folder's own feature cache, inside the folder


@dataclass(frozen=True)
class SplitTensors:
    """One split of one holder. Rows whose modality is missing still exist but must not be read."""

    image_features: torch.Tensor  # (n, D_image)
    report_features: torch.Tensor  # (n, D_text)
    availability: torch.Tensor  # (n,) int8 codes of `Availability`
    labels: torch.Tensor  # (n, F) int8, evaluation only

    def __len__(self) -> int:
        return len(self.availability)

    def rows(self, indices: torch.Tensor) -> "SplitTensors":
        """The split restricted to `indices` (a long or bool tensor), in that order."""
        return SplitTensors(*(getattr(self, field.name)[indices] for field in dataclasses.fields(self)))

    @classmethod
    def concatenate(cls, splits: "list[SplitTensors]") -> "SplitTensors":
        return cls(*(torch.cat([getattr(split, field.name) for split in splits]) for field in dataclasses.fields(cls)))

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

    def sites(self) -> dict[int, str]:
        """scenario=natural: the site each hospital stands for; empty for drawn hospitals."""
        return {part.hospital_id: part.site for part in self.federation.hospitals if part.site is not None}

    def hospital(self, hospital_id: int) -> HospitalData:
        part = self.federation.hospitals[hospital_id]
        return HospitalData(hospital_id, part.group, self.split(part.train_indices, part.train_availability),
                            self.split(part.test_indices, part.test_availability))

    def paired_counts(self) -> dict[int, int]:
        """Paired training samples per hospital: the n of each hospital's DP-SGD."""
        return {part.hospital_id: int((part.train_availability == AVAILABILITY_CODES[Availability.PAIRED]).sum())
                for part in self.federation.hospitals}

    def groups(self) -> dict[int, str]:
        """Each hospital's modality group (paired, image_only, report_only)."""
        return {part.hospital_id: part.group.value for part in self.federation.hospitals}

    def global_test(self) -> SplitTensors:
        indices = self.federation.global_test_indices
        paired = np.full(len(indices), AVAILABILITY_CODES[Availability.PAIRED], dtype=np.int8)
        return self.split(indices, paired)


def load_federated_data(cfg: ExperimentConfig, progress: bool = False) -> FederatedData:
    """Dataset (cached), features (cached) and the seeded partition for `cfg`."""
    dataset = load_dataset(cfg.dataset, cfg.cache_path)
    features = load_features(dataset, cfg.encoders, cfg.cache_path, cfg.device, progress)
    if dataset.patients is None:  # generated: every study its own patient, both modalities, no own split
        federation = partition_dataset(dataset.labels, cfg.scenario, cfg.dataset.global_test_fraction, cfg.seed)
    else:
        facts = StudyFacts(dataset.availability, dataset.patients, dataset.sites, dataset.splits)
        federation = partition_studies(dataset.labels, facts, cfg.scenario, cfg.dataset.global_test_fraction, cfg.seed)
    return FederatedData(features, torch.from_numpy(dataset.labels), federation)


def site_hospital_count(dataset_cfg: DatasetConfig, cache_path: Path, sites: SitesConfig) -> int:
    """How many hospitals `sites` makes of the dataset's site column (its training rows; no image is decoded)."""
    dataset = load_dataset(dataset_cfg, cache_path)
    if dataset.sites is None:
        raise ConfigError(f"scenario=natural needs a dataset with sites: dataset.name={dataset_cfg.name!r} has none "
                          "(dataset=folder with a `site` column in its manifest)")
    train = [site for site, split in zip(dataset.sites, dataset.splits) if split == "train"]
    return len(site_hospitals(train, sites))


SiteCount = Callable[[DatasetConfig, Path, SitesConfig], int]


def resolve_hospitals(cfg: ExperimentConfig, count: SiteCount = site_hospital_count) -> ExperimentConfig:
    """`scenario=natural`: `cfg` with `scenario.num_hospitals` set to the dataset's number of site hospitals
    (read from its manifest by `count`; a sweep passes a memoized one, so a manifest is read once for all its
    cells). Other scenarios: `cfg` itself."""
    if cfg.scenario.sites is None:
        return cfg
    hospitals = count(cfg.dataset, cfg.cache_path, cfg.scenario.sites)
    if cfg.scenario.num_hospitals not in (None, hospitals):
        raise ConfigError(f"scenario.num_hospitals={cfg.scenario.num_hospitals}, but the dataset's sites make "
                          f"{hospitals} hospitals; leave it null for scenario=natural")
    return dataclasses.replace(cfg, scenario=dataclasses.replace(cfg.scenario, num_hospitals=hospitals))


def reference_dataset_config(cfg: ExperimentConfig) -> DatasetConfig:
    """The reference set as a dataset: `cfg.reference`'s content, drawn at the federation's image size."""
    reference = cfg.reference
    if reference.name == "folder":
        if reference.path is None:
            raise ConfigError("reference.name=folder needs reference.path=DIR (a public dataset folder)")
        if cfg.dataset.path is not None and Path(reference.path).resolve() == Path(cfg.dataset.path).resolve():
            raise ConfigError(f"reference.path={reference.path!r} is the federation's own dataset: the reference set "
                              "must hold no hospital's study; give a public dataset folder")
        return DatasetConfig(name="folder", num_samples=reference.num_samples, image_size=cfg.dataset.image_size,
                             seed=0, global_test_fraction=0.0, path=reference.path, prompts=None, labels=None)
    if reference.name == cfg.dataset.name and reference.seed == cfg.dataset.seed:
        raise ConfigError(f"reference.seed={reference.seed} equals dataset.seed: the reference set would repeat "
                          "hospital studies and stop being non-private; choose another reference.seed")
    return DatasetConfig(name=reference.name, num_samples=reference.num_samples, image_size=cfg.dataset.image_size,
                         seed=reference.seed, global_test_fraction=0.0, path=None, prompts=None, labels=None)


def load_reference(cfg: ExperimentConfig, progress: bool = False) -> SplitTensors:
    """Features of the non-private reference set (every item paired), with the federation's encoders."""
    dataset = load_dataset(reference_dataset_config(cfg), cfg.cache_path)
    features = load_features(dataset, cfg.encoders, cfg.cache_path, cfg.device, progress)
    rows = torch.arange(len(dataset.labels))
    if dataset.availability is not None:  # a folder: its studies with both modalities
        rows = rows[torch.from_numpy(dataset.availability == AVAILABILITY_CODES[Availability.PAIRED])]
    paired = torch.full((len(rows),), AVAILABILITY_CODES[Availability.PAIRED], dtype=torch.int8)
    return SplitTensors(features.image_features[rows], features.report_features[rows], paired,
                        torch.from_numpy(dataset.labels)[rows])


@dataclass(frozen=True)
class ServerData:
    """What the server reads: the global test set (all paired) and the prompts' features, plus the
    federation's size. Simulation: sliced from the partition; deployment: the server's own folder."""

    num_hospitals: int
    global_test: SplitTensors
    features: FeatureSet  # its prompt features are the zero-shot prompts
    sites: dict[int, str] = dataclasses.field(default_factory=dict)  # scenario=natural: hospital -> its site
    validation: SplitTensors | None = None  # early stopping: held out from the global test pool

    @property
    def image_dim(self) -> int:
        return self.global_test.image_features.shape[1]

    @property
    def report_dim(self) -> int:
        return self.global_test.report_features.shape[1]


def load_server_data(cfg: ExperimentConfig) -> ServerData:
    """The server's data: `deployment.server_test_dir` when set, else the simulated partition's global test."""
    from fedmm.runs.selection import server_splits

    folder = cfg.deployment.server_test_dir
    if folder is None:
        data = load_federated_data(cfg)
        validation, test = server_splits(cfg, data.global_test())
        return ServerData(data.num_hospitals, test, data.features, data.sites(), validation)
    features, studies = load_folder_features(cfg, Path(folder))
    unpaired = int((studies.availability != AVAILABILITY_CODES[Availability.PAIRED]).sum())
    if unpaired:
        raise ConfigError(
            f"deployment.server_test_dir={folder!r}: {unpaired} of {len(studies)} studies lack "
            "an image or a report; the global test set needs both for every study"
        )
    everything = np.arange(len(studies))
    validation, test = server_splits(cfg, folder_split(features, studies, everything))
    return ServerData(cfg.scenario.num_hospitals, test, features, validation=validation)


def load_folder_features(cfg: ExperimentConfig, folder: Path) -> tuple[FeatureSet, MultimodalDataset]:
    """A hospital folder's studies (the ten findings' label columns) and their features, cached per study in
    the folder (`.fedmm-cache/`): an unchanged folder loads without decoding an image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"hospital folder {str(folder)!r} does not exist; give each node its own folder "
            "(`--node-config 'data-dir=\"/path\"'`), e.g. from `fedmm data export-synthetic`"
        )
    studies = read_folder(folder, cfg.dataset.image_size, FINDING_NAMES, prompts=None, known=FOLDER_FINDINGS)
    return load_features(studies, cfg.encoders, folder / FOLDER_CACHE, cfg.device), studies


def folder_split(features: FeatureSet, studies: MultimodalDataset, rows: np.ndarray) -> SplitTensors:
    selected = torch.from_numpy(rows)
    return SplitTensors(
        features.image_features[selected],
        features.report_features[selected],
        torch.from_numpy(studies.availability[rows]),
        torch.from_numpy(studies.labels[rows]),
    )


def load_hospital_folder(cfg: ExperimentConfig, folder: Path, hospital_id: int) -> tuple[HospitalData, FeatureSet]:
    """Hospital `hospital_id` as its own folder holds it: its train and test splits, and the features (for
    the prompts). Its group is what its training studies hold: paired if any pair, else its one modality."""
    features, studies = load_folder_features(cfg, folder)
    train = folder_split(features, studies, np.flatnonzero(studies.splits == "train"))
    test = folder_split(features, studies, np.flatnonzero(studies.splits == "test"))
    if not len(train):
        raise ValueError(
            f"hospital folder {str(folder)!r} has no study with split=train; a hospital needs training data"
        )
    group = (
        Availability.PAIRED
        if train.paired_mask.any()
        else Availability.IMAGE_ONLY
        if train.image_mask.any()
        else Availability.REPORT_ONLY
    )
    return HospitalData(hospital_id, group, train, test), features
