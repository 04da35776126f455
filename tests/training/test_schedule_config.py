import pytest

from mona_core.training.config import TrainConfig
from mona_core.training.schedule import step_decay_lr


def test_step_decay_matches_paper_schedule() -> None:
    assert step_decay_lr(0, 0.01, 2500, 0.1) == pytest.approx(0.01)
    assert step_decay_lr(2499, 0.01, 2500, 0.1) == pytest.approx(0.01)
    assert step_decay_lr(2500, 0.01, 2500, 0.1) == pytest.approx(0.001)
    assert step_decay_lr(7600, 0.01, 2500, 0.1) == pytest.approx(1e-5)


def test_step_decay_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expected step"):
        step_decay_lr(-1, 0.01, 2500, 0.1)


def test_defaults_are_the_papers() -> None:
    config = TrainConfig()
    assert (config.lr, config.momentum, config.weight_decay) == (0.01, 0.9, 1e-4)
    assert (config.batch_size, config.lr_step, config.lr_gamma, config.size) == (6, 2500, 0.1, 256)


@pytest.mark.parametrize(
    ("option", "value"),
    [("size", 100), ("iterations", 0), ("device", "tpu"), ("method", "magic"), ("lr", -1.0)],
)
def test_invalid_options_are_rejected_with_the_reason(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"expected {option}"):
        TrainConfig(**{option: value})  # type: ignore[arg-type]


def test_round_trip_and_unknown_keys() -> None:
    config = TrainConfig(iterations=10, size=64)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"iterations": 5, "k1": 3})
