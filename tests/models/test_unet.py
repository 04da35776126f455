import pytest
import torch

from mona_core.models import UNetConfig, build_model, count_parameters


def test_paper_unet_size_and_shapes() -> None:
    model = build_model(UNetConfig(num_classes=4))
    assert count_parameters(model) == 1_813_764  # the SSL4MIS-family UNet: ~1.81 M parameters
    out = model.forward_features(torch.zeros(2, 1, 64, 64))
    assert out.logits.shape == (2, 4, 64, 64)
    assert out.bottleneck.shape == (2, 256, 4, 4)
    assert [tuple(f.shape[1:]) for f in out.decoder] == [
        (128, 8, 8),
        (64, 16, 16),
        (32, 32, 32),
        (16, 64, 64),
    ]


def test_config_round_trip_and_validation() -> None:
    config = UNetConfig(num_classes=3)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="expected one dropout rate"):
        UNetConfig(dropout=(0.1,))
    with pytest.raises(ValueError, match="expected a model name"):
        build_model(UNetConfig(name="unknown"))
