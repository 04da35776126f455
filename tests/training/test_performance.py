"""Speed knobs through the trainer's own step: channels_last keeps the loss, bf16 autocast keeps float32 weights,
fused SGD and the thread count take effect, and TrainConfig refuses values it cannot honour."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mona_core.models import build_model
from mona_core.training.config import TrainConfig
from mona_core.training.slices import SliceBank
from mona_core.training.trainer import RunState, _new_state, _train_step

CPU = torch.device("cpu")
SIZE = 32
BASE = TrainConfig(
    size=SIZE, batch_size=6, iterations=100, rampup_fraction=0.0, local_views=4, device="cpu", augment=False
)


def _bank() -> SliceBank:
    rng = np.random.default_rng(0)
    images = rng.random((8, 1, SIZE, SIZE), dtype=np.float32)
    labels = rng.integers(0, 4, (8, SIZE, SIZE)).astype(np.uint8)
    return SliceBank(images, labels, rng.random((8, 1, SIZE, SIZE), dtype=np.float32))


def _state(config: TrainConfig, dropout: bool = True) -> RunState:
    """A fresh run state as the trainer builds it; ``dropout=False`` zeroes every dropout rate (see below)."""
    torch.manual_seed(config.seed)
    state = _new_state(config, 4, CPU)
    if not dropout:
        for layer in _layers(state, nn.Dropout):
            layer.p = 0.0
    return state


def _layers(state: RunState, kind: type[nn.Module]) -> Iterator[Any]:
    return (
        layer for module in state.method.modules().values() for layer in module.modules() if isinstance(layer, kind)
    )


def _first_conv_outputs(state: RunState) -> list[torch.Tensor]:
    """Record what the student's first convolution produces during the next step."""
    outputs: list[torch.Tensor] = []
    conv = next(_layers(state, nn.Conv2d))
    conv.register_forward_hook(lambda _module, _inputs, output: outputs.append(output.detach()))
    return outputs


@pytest.mark.parametrize("method", ["supervised", "finetune"])
def test_channels_last_keeps_the_loss_and_changes_the_layout(method: str) -> None:
    # Dropout draws its mask in memory order, so the two layouts would drop different pixels: switch it off to
    # compare the arithmetic itself.
    config = BASE.with_overrides(method=method)
    default, fast = _state(config, dropout=False), _state(config.with_overrides(channels_last=True), dropout=False)
    outputs = _first_conv_outputs(fast)
    expected, _ = _train_step(default, config, _bank(), CPU)
    got, _ = _train_step(fast, config.with_overrides(channels_last=True), _bank(), CPU)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert outputs and all(out.is_contiguous(memory_format=torch.channels_last) for out in outputs)
    weights = [p for module in fast.method.modules().values() for p in module.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_channels_last_weights_load_into_a_plain_network() -> None:
    config = BASE.with_overrides(channels_last=True)
    state = _state(config)
    _train_step(state, config, _bank(), CPU)
    trained = state.method.eval_model().eval()
    plain = build_model(trained.config)
    plain.load_state_dict(trained.state_dict())
    images = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(images), trained(images), atol=1e-5)


@pytest.mark.parametrize("method", ["supervised", "finetune"])
def test_bf16_autocast_runs_in_bf16_and_keeps_float32_weights(method: str) -> None:
    config = BASE.with_overrides(method=method, amp="bf16")
    state = _state(config)
    outputs = _first_conv_outputs(state)
    before = [p.detach().clone() for p in state.method.trainable()]
    losses, _ = _train_step(state, config, _bank(), CPU)
    assert outputs and all(out.dtype == torch.bfloat16 for out in outputs)
    after = list(state.method.trainable())
    assert all(p.dtype == torch.float32 for p in after)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in after)
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    assert np.isfinite(losses["loss"])


def test_fused_optimizer_is_used_where_torch_supports_it() -> None:
    state = _state(BASE.with_overrides(fused_optimizer=True))
    assert state.optimizer.param_groups[0]["fused"] is True
    assert not _state(BASE).optimizer.param_groups[0]["fused"]


def test_fused_optimizer_falls_back_with_a_note(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    real_sgd = torch.optim.SGD

    def refusing_sgd(*args: Any, fused: bool | None = None, **kwargs: Any) -> torch.optim.SGD:
        if fused:
            raise RuntimeError("fused not supported here")
        return real_sgd(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", refusing_sgd)
    with caplog.at_level(logging.WARNING, logger="mona_core.training.performance"):
        state = _state(BASE.with_overrides(fused_optimizer=True))
    assert not state.optimizer.param_groups[0]["fused"]
    assert "fused SGD unsupported" in caplog.text


def test_threads_sets_torch_intra_op_threads() -> None:
    previous = torch.get_num_threads()
    wanted = 2 if previous != 2 else 1
    try:
        _state(BASE.with_overrides(threads=wanted))
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "overrides",
    [{"amp": "fp16"}, {"amp": "BF16"}, {"amp": ""}, {"threads": 0}, {"threads": -2}],
)
def test_config_refuses_invalid_speed_knobs(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        TrainConfig(**overrides)


def test_speed_knobs_round_trip_through_a_saved_config() -> None:
    config = TrainConfig(channels_last=True, amp="bf16", fused_optimizer=True, threads=2)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig().amp == "none" and TrainConfig().threads is None
