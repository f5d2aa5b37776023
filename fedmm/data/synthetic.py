"""The built-in dataset: synthetic chest-X-ray-like images with the radiology reports that describe them.

Deterministic: study i depends only on (seed, i), so a larger dataset extends a smaller one.
Generated on first use (a few seconds for thousands of studies) and cached as one `.npz` file.
"""

import hashlib
import logging
from pathlib import Path

import numpy as np
from filelock import FileLock

from fedmm.data.dataset import MultimodalDataset
from fedmm.data.findings import FINDINGS
from fedmm.data.render import render_study
from fedmm.data.reports import write_report
from fedmm.data.studies import sample_study

GENERATOR_VERSION = 1  # bump when rendering or report templates change: invalidates every cache
log = logging.getLogger(__name__)


def generate_study(seed: int, index: int, image_size: int) -> tuple[np.ndarray, str, np.ndarray]:
    """One study: (image (S, S) uint8, report, labels (F,) int8)."""
    rng = np.random.default_rng([seed, index])
    study = sample_study(rng)
    image = render_study(study, image_size, rng)
    return image, write_report(study, rng), study.labels


def generate_synthetic_cxr(num_samples: int, image_size: int, seed: int) -> MultimodalDataset:
    """Generate the dataset in memory (no cache)."""
    if not 64 <= image_size <= 256:
        raise ValueError(f"dataset.image_size={image_size}: the synthetic generator draws 64 to 256 px images")
    studies = [generate_study(seed, index, image_size) for index in range(num_samples)]
    images, reports, labels = zip(*studies) if studies else ((), (), ())
    return MultimodalDataset(
        name="synthetic_cxr",
        fingerprint=_fingerprint(num_samples, image_size, seed),
        images=np.stack(images) if images else np.zeros((0, image_size, image_size), np.uint8),
        reports=tuple(reports),
        labels=np.stack(labels) if labels else np.zeros((0, len(FINDINGS)), np.int8),
        findings=FINDINGS,
    )


def load_synthetic_cxr(num_samples: int, image_size: int, seed: int, cache_dir: Path) -> MultimodalDataset:
    """Load the dataset from `cache_dir`, generating and caching it on first use."""
    fingerprint = _fingerprint(num_samples, image_size, seed)
    path = Path(cache_dir) / "datasets" / f"synthetic_cxr-{fingerprint}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One generation when several processes ask at once (parallel runs, test workers): without the lock
    # both wrote the same partial file and the second rename found it gone.
    with FileLock(str(path) + ".lock"):
        if path.exists():
            with np.load(path, allow_pickle=False) as stored:
                return MultimodalDataset("synthetic_cxr", fingerprint, stored["images"],
                                         tuple(stored["reports"].tolist()), stored["labels"], FINDINGS)
        log.info("generating %d synthetic studies at %d px (seed %d)", num_samples, image_size, seed)
        dataset = generate_synthetic_cxr(num_samples, image_size, seed)
        partial = path.with_suffix(".partial.npz")
        np.savez_compressed(partial, images=dataset.images, reports=np.array(dataset.reports), labels=dataset.labels)
        partial.replace(path)  # atomic: a crash never leaves a half-written cache behind
        return dataset


def _fingerprint(num_samples: int, image_size: int, seed: int) -> str:
    key = f"synthetic_cxr:v{GENERATOR_VERSION}:n={num_samples}:size={image_size}:seed={seed}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]
