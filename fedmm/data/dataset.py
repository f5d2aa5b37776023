"""The contract every dataset offers: aligned images, reports and finding labels, plus a fingerprint."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MultimodalDataset:
    """Aligned image-report studies. Finding labels are for evaluation only."""

    name: str
    fingerprint: str  # changes whenever the content could change; keys the feature cache
    images: np.ndarray  # (N, S, S) uint8 grayscale
    reports: tuple[str, ...]  # (N,)
    labels: np.ndarray  # (N, F) int8 multi-hot, in FINDING_NAMES order

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.reports) != n or len(self.labels) != n:
            raise ValueError(
                f"dataset {self.name!r}: {n} images, {len(self.reports)} reports and {len(self.labels)} label rows;"
                " every study needs one of each"
            )

    def __len__(self) -> int:
        return len(self.images)
