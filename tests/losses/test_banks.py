import pytest
import torch

from mona_core.losses import ClassMemoryBank, EmbeddingQueue


def _one_hots(indices: list[int], dim: int = 4, scale: float = 3.0) -> torch.Tensor:
    return torch.eye(dim)[indices] * scale


def test_queue_fills_in_fifo_order_and_normalises() -> None:
    queue = EmbeddingQueue(size=3, dim=4)
    assert len(queue) == 0 and not queue.full
    assert queue.tensor().shape == (0, 4)
    queue.push(_one_hots([0, 1]))
    assert len(queue) == 2 and not queue.full
    assert torch.equal(queue.tensor(), torch.eye(4)[[0, 1]])


def test_queue_wraps_around_oldest_first() -> None:
    queue = EmbeddingQueue(size=3, dim=4)
    queue.push(_one_hots([0, 1]))
    queue.push(_one_hots([2, 3]))
    assert queue.full and len(queue) == 3
    assert torch.equal(queue.tensor(), torch.eye(4)[[1, 2, 3]])
    queue.push(_one_hots([0]))
    assert torch.equal(queue.tensor(), torch.eye(4)[[2, 3, 0]])


def test_queue_push_larger_than_size_keeps_the_newest() -> None:
    queue = EmbeddingQueue(size=3, dim=4)
    queue.push(_one_hots([0]))
    queue.push(_one_hots([3, 2, 1, 0, 3]))
    assert torch.equal(queue.tensor(), torch.eye(4)[[1, 0, 3]])


def test_queue_stores_detached_copies() -> None:
    queue = EmbeddingQueue(size=2, dim=4)
    x = torch.randn(2, 4, requires_grad=True)
    queue.push(x)
    stored = queue.tensor()
    assert not stored.requires_grad
    stored.zero_()
    assert queue.tensor().abs().sum() > 0
    assert torch.allclose(queue.tensor().norm(dim=1), torch.ones(2))


def test_queue_rejects_wrong_dim() -> None:
    with pytest.raises(ValueError, match="expected embeddings of shape"):
        EmbeddingQueue(size=2, dim=4).push(torch.randn(2, 5))


def test_class_bank_separates_classes_and_wraps() -> None:
    bank = ClassMemoryBank(num_classes=3, size_per_class=2, dim=2)
    reps = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    bank.push(reps, torch.tensor([0, 2, 0]))
    assert torch.equal(bank.get(0), reps[[0, 2]])
    assert torch.equal(bank.get(2), reps[[1]])
    assert bank.get(1).shape == (0, 2) and bank.count(1) == 0
    bank.push(torch.tensor([[4.0, 4.0]]), torch.tensor([0]))
    assert torch.equal(bank.get(0), torch.tensor([[3.0, 3.0], [4.0, 4.0]]))
    assert bank.count(0) == 2 and bank.count(2) == 1


def test_class_bank_detaches_and_validates() -> None:
    bank = ClassMemoryBank(num_classes=2, size_per_class=4, dim=3)
    bank.push(torch.randn(5, 3, requires_grad=True), torch.tensor([0, 1, 1, 0, 1]))
    assert not bank.get(1).requires_grad and bank.count(1) == 3
    with pytest.raises(ValueError, match=r"expected labels in 0\.\.1"):
        bank.push(torch.randn(1, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"expected a class in 0\.\.1"):
        bank.get(5)
