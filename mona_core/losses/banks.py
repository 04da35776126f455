"""Memory banks: a FIFO queue of embeddings and a class-aware bank of pixel representations.

Both preallocate their storage on the given device and write into it as a ring buffer (a pointer and a count), so
memory stays fixed however long training runs. Everything stored is detached: a bank never carries a graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F


def _ring_write(storage: torch.Tensor, start: int, rows: torch.Tensor) -> int:
    """Write ``rows`` (n, D) into ``storage`` (S, D) from row ``start`` on, wrapping round; return the next start.

    Only the newest S rows can survive, so older ones of an oversized push are dropped before writing.
    """
    size = storage.shape[0]
    rows = rows[-size:]
    index = (start + torch.arange(rows.shape[0], device=storage.device)) % size
    storage[index] = rows.to(storage)
    return (start + rows.shape[0]) % size


def _oldest_first(storage: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """The ``count`` filled rows of a ring buffer, oldest first, as a new tensor."""
    if count < storage.shape[0]:
        return storage[:count].clone()
    return torch.roll(storage, shifts=-start, dims=0)


def _check_stored(saved: torch.Tensor, storage: torch.Tensor) -> None:
    if tuple(saved.shape) != tuple(storage.shape):
        raise ValueError(f"expected a saved bank of shape {tuple(storage.shape)}, got {tuple(saved.shape)}")


def _check_rows(rows: torch.Tensor, dim: int, what: str) -> None:
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"expected {what} of shape (N, {dim}), got {tuple(rows.shape)}")


class EmbeddingQueue:
    """FIFO of the last ``size`` L2-normalised, detached embeddings (D = ``dim``), e.g. the teacher's v'_g.

    ``push(x)`` adds (B, D) rows; ``tensor()`` returns the filled rows (n, D), oldest first; ``len()`` is n.
    """

    def __init__(
        self, size: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        if size < 1 or dim < 1:
            raise ValueError(f"expected size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.size, self.dim = size, dim
        self._storage = torch.zeros(size, dim, device=device, dtype=dtype)
        self._start = 0
        self._count = 0

    def push(self, x: torch.Tensor) -> None:
        """Append the rows of ``x`` (B, D), normalised and detached; the oldest rows fall out when full."""
        _check_rows(x, self.dim, "embeddings")
        self._start = _ring_write(self._storage, self._start, F.normalize(x.detach(), dim=1))
        self._count = min(self._count + x.shape[0], self.size)

    def tensor(self) -> torch.Tensor:
        """The stored embeddings (n, D), oldest first, on the queue's device."""
        return _oldest_first(self._storage, self._start, self._count)

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count == self.size

    def state_dict(self) -> dict[str, Any]:
        """Storage and ring pointers, for checkpoints: a resumed run sees the same mined views."""
        return {"storage": self._storage.clone(), "start": self._start, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_stored(state["storage"], self._storage)
        self._storage.copy_(state["storage"])
        self._start, self._count = int(state["start"]), int(state["count"])


class ClassMemoryBank:
    """Per-class FIFO of the last ``size_per_class`` detached representations (D = ``dim``), for class-aware negatives.

    ``push(reps (N, D), labels (N,))`` files each row under its label (0..num_classes-1); ``get(c)`` returns the
    (n_c, D) rows of class c, oldest first. Rows are stored as given (the caller normalises).
    """

    def __init__(
        self,
        num_classes: int,
        size_per_class: int,
        dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_classes < 1 or size_per_class < 1 or dim < 1:
            raise ValueError(f"expected positive sizes, got {num_classes=}, {size_per_class=}, {dim=}")
        self.num_classes, self.size_per_class, self.dim = num_classes, size_per_class, dim
        self._storage = torch.zeros(num_classes, size_per_class, dim, device=device, dtype=dtype)
        self._starts = [0] * num_classes
        self._counts = [0] * num_classes

    def push(self, reps: torch.Tensor, labels: torch.Tensor) -> None:
        """File the detached rows of ``reps`` (N, D) under their integer ``labels`` (N,)."""
        _check_rows(reps, self.dim, "representations")
        if labels.shape != reps.shape[:1]:
            raise ValueError(f"expected labels of shape ({reps.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"expected labels in 0..{self.num_classes - 1}, got {torch.unique(labels).tolist()}")
        for c in torch.unique(labels).tolist():
            rows = reps[labels == c].detach()
            self._starts[c] = _ring_write(self._storage[c], self._starts[c], rows)
            self._counts[c] = min(self._counts[c] + rows.shape[0], self.size_per_class)

    def get(self, c: int) -> torch.Tensor:
        """The stored representations (n_c, D) of class ``c``, oldest first; (0, D) when none yet."""
        self._check_class(c)
        return _oldest_first(self._storage[c], self._starts[c], self._counts[c])

    def count(self, c: int) -> int:
        """How many representations of class ``c`` are stored."""
        self._check_class(c)
        return self._counts[c]

    def state_dict(self) -> dict[str, Any]:
        """Storage and per-class ring pointers, for checkpoints."""
        return {"storage": self._storage.clone(), "starts": list(self._starts), "counts": list(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_stored(state["storage"], self._storage)
        self._storage.copy_(state["storage"])
        self._starts, self._counts = [int(v) for v in state["starts"]], [int(v) for v in state["counts"]]

    def _check_class(self, c: int) -> None:
        if not 0 <= c < self.num_classes:
            raise ValueError(f"expected a class in 0..{self.num_classes - 1}, got {c}")
