"""Tailness: the anatomical contrastive formulation (ACF, paper eq. 3-5).

Per class c present in the batch, queries (hard ones first) are pulled to the class mean r_k^{c,+} and pushed from
negative keys of the other classes, drawn class by class in proportion to softmax_v(G[c, v]) over the class-relation
graph G[p, q] = r_k^{p,+} . r_k^{q,+}. Unlike the public reference code, the classes are those actually present, so a
class missing from the batch is skipped rather than mis-indexed, and a class-aware memory bank only adds to the
negative pools.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mona_core.losses.banks import ClassMemoryBank


def _check_inputs(
    reps: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, tau: float, num_queries: int, num_negatives: int
) -> None:
    if reps.ndim != 2:
        raise ValueError(f"expected reps of shape (N, D), got {tuple(reps.shape)}")
    if labels.shape != reps.shape[:1] or confidence.shape != reps.shape[:1]:
        raise ValueError(
            f"expected labels and confidence of shape ({reps.shape[0]},), got {tuple(labels.shape)} and "
            f"{tuple(confidence.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"expected integer labels, got {labels.dtype}")
    if tau <= 0 or num_queries < 1 or num_negatives < 1:
        raise ValueError(
            f"expected tau > 0 and at least one query and negative, got {tau=}, {num_queries=}, {num_negatives=}"
        )


def _positive_keys(keys: torch.Tensor, key_labels: torch.Tensor, present: list[int]) -> torch.Tensor:
    """Class means r_k^{c,+} (eq. 4) of the ``present`` classes over the key sample; detached, unit: (|C|, D)."""
    detached = keys.detach()
    return F.normalize(torch.stack([detached[key_labels == c].mean(dim=0) for c in present]), dim=1)


def _queries(
    reps: torch.Tensor,
    mask: torch.Tensor,
    confidence: torch.Tensor,
    num: int,
    threshold: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Up to ``num`` of the class's pixels (eq. 5): hard ones (confidence <= threshold) first, in random order,
    topped up with easy ones; without replacement."""
    pixels = mask.nonzero(as_tuple=True)[0]
    easy = (confidence[pixels] > threshold).float()
    priority = torch.rand(pixels.numel(), generator=generator, device=reps.device) + easy
    return reps[pixels[priority.argsort()[:num]]]


def _negatives(
    keys: torch.Tensor, c: int, pools: list[torch.Tensor], num: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``num`` negative keys for present class index ``c``: class v's share drawn from softmax_{v != c} G[c, v],
    then its keys drawn with replacement from its pool."""
    relation = keys[c] @ keys.T
    relation[c] = float("-inf")
    draws = torch.multinomial(torch.softmax(relation, dim=0), num, replacement=True, generator=generator)
    shares = torch.bincount(draws, minlength=len(pools)).tolist()
    picked = [
        pool[torch.randint(pool.shape[0], (n,), generator=generator, device=pool.device)]
        for pool, n in zip(pools, shares, strict=True)
        if n > 0
    ]
    return torch.cat(picked)


def _pool(keys: torch.Tensor, key_labels: torch.Tensor, c: int, bank: ClassMemoryBank | None) -> torch.Tensor:
    """Candidate negative keys of class ``c``: its detached key pixels in the batch plus, with a bank, stored ones."""
    own = keys[key_labels == c].detach()
    return own if bank is None else torch.cat([own, bank.get(c).to(own)])


def anatomical_contrast_loss(
    reps: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    *,
    keys: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    num_queries: int = 256,
    num_negatives: int = 512,
    hard_threshold: float = 0.97,
    tau: float = 0.5,
    bank: ClassMemoryBank | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_contrast of eq. 3 with the queries of eq. 5 and the keys of eq. 4; returns a scalar.

    ``reps``: (N, D) candidate query representations, already sampled (hard first, see ``sample_pixels``) and
    L2-normalised by the caller; ``labels``: (N,) integer ground-truth or pseudo-labels; ``confidence``: (N,)
    predicted probability of each pixel's label class. ``keys`` / ``key_labels``: (M, D) / (M,) a uniform sample of
    each class's pixels, for the class means (positive keys) and the negative pools — a query sample chosen for its
    hardness would bias the means towards boundaries; default: ``reps`` / ``labels`` themselves. Per query,
    ``-log(exp(q.k+/tau) / (exp(q.k+/tau) + sum_neg exp(q.k-/tau)))``, averaged over the class's queries; the classes
    (those in both samples) are then AVERAGED (eq. 3 sums) so the weight lambda_1 does not depend on how many classes
    a batch holds. Keys are detached; only the queries carry a gradient. Fewer than two classes present: a zero that
    still backpropagates. With ``bank``, its stored reps join each class's negative pool, and the batch's keys are
    pushed afterwards. ``generator`` (on ``reps``' device) drives the query, share and key sampling.
    """
    _check_inputs(reps, labels, confidence, tau, num_queries, num_negatives)
    keys, key_labels = (reps, labels) if keys is None or key_labels is None else (keys, key_labels)
    present = sorted(set(torch.unique(labels).tolist()) & set(torch.unique(key_labels).tolist()))
    if len(present) < 2:
        loss = reps.sum() * 0.0
    else:
        means = _positive_keys(keys, key_labels, present)
        pools = [_pool(keys, key_labels, c, bank) for c in present]
        per_class = []
        for i, c in enumerate(present):
            queries = _queries(reps, labels == c, confidence, num_queries, hard_threshold, generator)
            negatives = _negatives(means, i, pools, num_negatives, generator)
            logits = torch.cat([queries @ means[i : i + 1].T, queries @ negatives.T], dim=1) / tau
            per_class.append(F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long)))
        loss = torch.stack(per_class).mean()
    if bank is not None:
        bank.push(keys.detach(), key_labels)
    return loss
