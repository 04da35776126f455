"""Losses, one module per idea. Each is a short named function with a hand-computed test."""

from mona_core.losses.supervised import soft_dice_loss, supervised_loss

__all__ = ["soft_dice_loss", "supervised_loss"]
