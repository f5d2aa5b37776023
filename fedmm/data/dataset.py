"""The contract every dataset offers: aligned images, reports and finding labels, the label vocabulary
with its zero-shot prompts, and a fingerprint."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedmm.data.findings import Finding


class StudyImages(Protocol):
    """Images read from disk on demand (`folder_dataset.FolderImages`), never held all at once."""

    study_keys: tuple[str | None, ...]  # (N,) stands for each image's content; None: the study has none

    def __len__(self) -> int: ...

    def read(self, rows: Sequence[int]) -> tuple[np.ndarray, list[int], list]:
        """(pixels (k, S, S) uint8, the rows read, a problem for each row that could not be)."""
        ...

    def raise_problems(self, problems: list) -> None: ...


@dataclass(frozen=True)
class MultimodalDataset:
    """Aligned image-report studies. Finding labels are for evaluation only."""

    name: str
    fingerprint: str  # changes whenever the content could change; keys the feature cache
    images: np.ndarray | StudyImages  # (N, S, S) uint8 grayscale: in memory (generated) or read from disk
    reports: tuple[str, ...]  # (N,)
    labels: np.ndarray  # (N, F) int8 multi-hot (-1: unknown), in `findings` order
    findings: tuple[Finding, ...]  # (F,) the label vocabulary and the prompts zero-shot evaluation uses
    # What a dataset read from disk also says (None for generated ones, where every study is its own patient,
    # holds both modalities and the partition draws the server's test set):
    availability: np.ndarray | None = None  # (N,) int8 `Availability` codes: the modalities on disk
    patients: tuple[str, ...] | None = None  # (N,) a patient's studies never end up in two holders
    sites: tuple[str, ...] | None = None  # (N,) the institution of each study (scenario=natural)
    splits: np.ndarray | None = None  # (N,) str train | test: the dataset's own split (test: the server's)

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.reports) != n or len(self.labels) != n:
            raise ValueError(
                f"dataset {self.name!r}: {n} images, {len(self.reports)} reports and {len(self.labels)} label rows;"
                " every study needs one of each"
            )
        for field in ("availability", "patients", "sites", "splits"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"dataset {self.name!r}: {len(value)} {field} for {n} studies")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.findings):
            raise ValueError(f"dataset {self.name!r}: labels of shape {self.labels.shape} for {len(self.findings)} "
                             "findings; give one label column per finding of the vocabulary")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def read_from_disk(self) -> bool:
        """Its images are files: features are cached per study, so an edit recomputes only what it touched."""
        return not isinstance(self.images, np.ndarray)
