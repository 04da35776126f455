import math

import pytest
import torch
from torch.nn import functional as F

from mona_core.losses import ClassMemoryBank, anatomical_contrast_loss

TAU = 0.5


def _term(positive: float, negatives: list[float], tau: float = TAU) -> float:
    """-log(exp(q.k+/tau) / (exp(q.k+/tau) + sum exp(q.k-/tau))) for one query."""
    pos = math.exp(positive / tau)
    return -math.log(pos / (pos + sum(math.exp(n / tau) for n in negatives)))


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hand_computed_two_classes() -> None:
    # Class 0: a = (0.6, 0.8), b = (-0.6, 0.8) -> mean (0, 0.8) -> k+ = (0, 1): a.k+ = b.k+ = 0.8.
    # Class 1: r = (0, -1) -> k+ = r: r.k+ = 1. Every cross-class dot is -0.8, so the sampling cannot matter:
    # class 0's three negatives are all r; class 1's are a or b.
    reps = torch.tensor([[0.6, 0.8], [-0.6, 0.8], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1])
    confidence = torch.full((3,), 0.5)
    loss = anatomical_contrast_loss(reps, labels, confidence, num_queries=4, num_negatives=3, tau=TAU)
    expected = (_term(0.8, [-0.8] * 3) + _term(1.0, [-0.8] * 3)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_missing_middle_class_is_skipped() -> None:
    # Labels {0, 2, 3} of 4 classes; three unit vectors 120 degrees apart: every cross-class dot is -1/2.
    s = math.sqrt(3.0) / 2
    reps = torch.tensor([[1.0, 0.0], [-0.5, s], [-0.5, -s]])
    bank = ClassMemoryBank(num_classes=4, size_per_class=4, dim=2)
    loss = anatomical_contrast_loss(
        reps, torch.tensor([0, 2, 3]), torch.ones(3), num_negatives=4, tau=TAU, bank=bank, generator=_generator()
    )
    assert loss.item() == pytest.approx(_term(1.0, [-0.5] * 4), abs=1e-5)
    assert [bank.count(c) for c in range(4)] == [1, 0, 1, 1]
    assert torch.equal(bank.get(3), reps[2:])


def test_missing_class_matches_the_relabelled_batch() -> None:
    raw = torch.randn(30, 6, generator=_generator(1))
    reps = F.normalize(raw, dim=1)
    labels = torch.randint(0, 3, (30,), generator=_generator(2))
    confidence = torch.rand(30, generator=_generator(3))
    gapped = torch.tensor([0, 2, 3])[labels]
    kwargs = {"num_queries": 5, "num_negatives": 7, "tau": TAU}
    plain = anatomical_contrast_loss(reps, labels, confidence, generator=_generator(), **kwargs)
    with_gap = anatomical_contrast_loss(reps, gapped, confidence, generator=_generator(), **kwargs)
    assert with_gap.item() == pytest.approx(plain.item(), abs=1e-6)


def _hard_case(hard: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Class 0: h = (0.6, 0.8), e = (-0.6, 0.8) twice; class 1: r = (0, -1); every cross-class dot is -0.8.
    reps = torch.tensor([[0.6, 0.8], [-0.6, 0.8], [-0.6, 0.8], [0.0, -1.0]])
    confidence = torch.tensor([0.5 if is_hard else 0.99 for is_hard in hard])
    return reps, torch.tensor([0, 0, 0, 1]), confidence


# Class 0's mean is (-0.2, 0.8) / sqrt(0.68): h.k+ = 0.52 / sqrt(0.68), e.k+ = 0.76 / sqrt(0.68).
H_POS, E_POS = 0.52 / math.sqrt(0.68), 0.76 / math.sqrt(0.68)
CLASS_1 = _term(1.0, [-0.8] * 2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("hard", "positive"), [([True, False, False, False], H_POS), ([False, True, True, False], E_POS)]
)
def test_hard_queries_are_preferred(seed: int, hard: list[bool], positive: float) -> None:
    # One query for class 0: it must be a hard pixel, whichever the seed, and the loss tells h from e.
    reps, labels, confidence = _hard_case(hard)
    loss = anatomical_contrast_loss(
        reps, labels, confidence, num_queries=1, num_negatives=2, generator=_generator(seed)
    )
    assert loss.item() == pytest.approx((_term(positive, [-0.8] * 2) + CLASS_1) / 2, abs=1e-5)


def test_easy_queries_top_up_the_hard_ones() -> None:
    reps, labels, confidence = _hard_case([True, False, False, False])
    loss = anatomical_contrast_loss(reps, labels, confidence, num_queries=2, num_negatives=2, generator=_generator())
    class_0 = (_term(H_POS, [-0.8] * 2) + _term(E_POS, [-0.8] * 2)) / 2
    assert loss.item() == pytest.approx((class_0 + CLASS_1) / 2, abs=1e-5)


def test_gradient_flows_to_the_representations() -> None:
    raw = torch.randn(40, 8, requires_grad=True)
    labels = torch.randint(0, 3, (40,), generator=_generator())
    loss = anatomical_contrast_loss(F.normalize(raw, dim=1), labels, torch.rand(40), generator=_generator())
    loss.backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


def test_single_class_gives_zero_with_a_gradient() -> None:
    raw = torch.randn(5, 4, requires_grad=True)
    loss = anatomical_contrast_loss(F.normalize(raw, dim=1), torch.ones(5, dtype=torch.long), torch.rand(5))
    loss.backward()
    assert loss.item() == 0.0 and raw.grad is not None


def test_bank_enlarges_the_negative_pool_and_is_filled_afterwards() -> None:
    reps = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1])
    confidence = torch.ones(2)
    plain = anatomical_contrast_loss(reps, labels, confidence, num_negatives=16, generator=_generator())
    assert plain.item() == pytest.approx(_term(1.0, [-1.0] * 16), abs=1e-5)
    empty = ClassMemoryBank(num_classes=2, size_per_class=8, dim=2)
    same = anatomical_contrast_loss(reps, labels, confidence, num_negatives=16, bank=empty, generator=_generator())
    assert same.item() == pytest.approx(plain.item(), abs=1e-6)  # the batch is pushed only after the loss
    bank = ClassMemoryBank(num_classes=2, size_per_class=8, dim=2)
    bank.push(torch.tensor([[0.8, 0.6]]).repeat(8, 1), torch.ones(8, dtype=torch.long))
    harder = anatomical_contrast_loss(reps, labels, confidence, num_negatives=16, bank=bank, generator=_generator())
    assert harder.item() > plain.item() + 0.1  # class 0 now meets negatives at cosine 0.8
    assert bank.count(0) == 1 and bank.count(1) == 8
    assert torch.equal(bank.get(1)[-1], reps[1])


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="expected labels and confidence"):
        anatomical_contrast_loss(torch.randn(3, 2), torch.zeros(2, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="expected integer labels"):
        anatomical_contrast_loss(torch.randn(3, 2), torch.zeros(3), torch.ones(3))
