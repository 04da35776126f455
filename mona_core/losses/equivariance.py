"""Consistency: the equivariance loss (paper eq. 6), a symmetric KL between T(F(x)) and F(T(x))."""

from __future__ import annotations

import torch


def equivariance_loss(
    transformed_of_output: torch.Tensor, output_of_transformed: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """L_eqv of eq. 6: KL(p_a || p_b) + KL(p_b || p_a) per pixel, summed over classes, averaged over valid pixels.

    ``transformed_of_output``: (B, C, H, W) logits T(F(x)); ``output_of_transformed``: (B, C, H, W) logits F(T(x));
    both from the SAME image x and the same transformation T (the public reference code instead compares the outputs
    of two differently augmented views, which is not eq. 6). p = softmax over C. ``valid``: optional (B, 1, H, W)
    mask (bool or 0/1) of the pixels that T keeps inside the image; no valid pixel gives a zero that backpropagates.
    Both arguments receive a gradient. The symmetric sum equals sum_c (p_a - p_b)(log p_a - log p_b).
    """
    if transformed_of_output.ndim != 4 or transformed_of_output.shape != output_of_transformed.shape:
        raise ValueError(
            f"expected two logits of the same shape (B, C, H, W), got {tuple(transformed_of_output.shape)} and "
            f"{tuple(output_of_transformed.shape)}"
        )
    log_a = torch.log_softmax(transformed_of_output, dim=1)
    log_b = torch.log_softmax(output_of_transformed, dim=1)
    per_pixel = ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(dim=1, keepdim=True)
    if valid is None:
        return per_pixel.mean()
    expected = (per_pixel.shape[0], 1, *per_pixel.shape[2:])
    if tuple(valid.shape) != expected:
        raise ValueError(f"expected a valid mask of shape {expected}, got {tuple(valid.shape)}")
    weight = valid.to(per_pixel.dtype)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)
