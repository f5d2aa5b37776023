"""Features are extracted once per (dataset, encoder, preprocessing) and recomputed when any changes."""

import re

import pytest
import torch
from helpers import configured

from fedmm.config import ConfigError, EncodersConfig
from fedmm.data.synthetic import generate_synthetic_cxr
from fedmm.models import encoders as encoders_module
from fedmm.models.encoders import build_image_encoder, check_image_encoder
from fedmm.models.features import load_features


@pytest.fixture(scope="module")
def tiny():
    return generate_synthetic_cxr(num_samples=12, image_size=64, seed=0)


RESNET18 = "encoders/image=resnet18"  # the cheapest encoder (the default is EfficientNet-Lite0: tests/models)


def encoders(**image) -> EncodersConfig:
    return configured("encoders", RESNET18,
                      image=configured("encoders.image", RESNET18, input_size=64, batch_size=5, **image))


def test_second_load_reads_the_cache(tiny, tmp_path, monkeypatch):
    first = load_features(tiny, encoders(), tmp_path)
    assert first.image_features.shape == (12, 512 * 4) and first.report_features.shape == (12, 384)
    assert len(first.prompt_features) == len(first.prompt_finding) > 10
    # features.py imports the encoders where it extracts: patch them where they live
    monkeypatch.setattr(encoders_module, "build_image_encoder", lambda cfg: pytest.fail("image features recomputed"))
    monkeypatch.setattr(encoders_module, "build_text_encoder", lambda cfg: pytest.fail("text features recomputed"))
    second = load_features(tiny, encoders(), tmp_path)
    assert torch.equal(first.image_features, second.image_features)
    assert torch.equal(first.report_features, second.report_features)


def test_changing_encoder_preprocessing_or_dataset_recomputes(tiny, tmp_path):
    base = load_features(tiny, encoders(), tmp_path)
    pooled = load_features(tiny, encoders(pooling="avg"), tmp_path)
    assert pooled.image_features.shape == (12, 512)
    reseeded = load_features(tiny, encoders(init_seed=1), tmp_path)
    assert not torch.equal(reseeded.image_features, base.image_features)
    other_data = generate_synthetic_cxr(num_samples=12, image_size=64, seed=1)
    assert not torch.equal(load_features(other_data, encoders(), tmp_path).image_features, base.image_features)
    assert len(list((tmp_path / "features").glob("image-*.safetensors"))) == 4
    assert len(list((tmp_path / "features").glob("text-*.safetensors"))) == 2


def test_batched_extraction_equals_one_big_batch(tiny):
    encoder = build_image_encoder(configured("encoders.image", RESNET18, input_size=64))
    with torch.inference_mode():
        whole = encoder(torch.from_numpy(tiny.images))
        parts = torch.cat([encoder(torch.from_numpy(tiny.images[i:i + 5])) for i in range(0, 12, 5)])
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-5)


def test_local_weights_file_is_loaded_and_a_missing_one_is_named(tmp_path):
    reference = build_image_encoder(configured("encoders.image", RESNET18, init_seed=3))
    import torchvision

    weights = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    loaded = build_image_encoder(configured("encoders.image", RESNET18, weights=str(path), init_seed=3))
    first_conv = next(loaded.trunk.parameters())
    assert torch.equal(first_conv, weights["conv1.weight"])
    assert not torch.equal(first_conv, next(reference.trunk.parameters()))
    with pytest.raises(ConfigError, match="encoders.image.weights='/no/such.pth': no such file"):
        check_image_encoder(configured("encoders.image", RESNET18, weights="/no/such.pth"))
    valid = ["densenet121", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50"]
    with pytest.raises(ConfigError, match=re.escape(f"valid: {valid}")):
        check_image_encoder(configured("encoders.image", name="vit"))
