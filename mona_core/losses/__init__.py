"""Losses, one module per idea. Each is a short named function with a hand-computed test."""

from mona_core.losses.banks import ClassMemoryBank, EmbeddingQueue
from mona_core.losses.contrast import anatomical_contrast_loss
from mona_core.losses.copy_paste import weighted_dice_ce_loss
from mona_core.losses.equivariance import equivariance_loss
from mona_core.losses.instance import relation_kl_loss
from mona_core.losses.neighbours import nearest_neighbour_loss
from mona_core.losses.supervised import soft_dice_loss, supervised_loss
from mona_core.losses.unsupervised import cross_pseudo_supervision_loss, pseudo_label_ce_loss, softmax_mse_loss

__all__ = [
    "ClassMemoryBank",
    "EmbeddingQueue",
    "anatomical_contrast_loss",
    "cross_pseudo_supervision_loss",
    "equivariance_loss",
    "nearest_neighbour_loss",
    "pseudo_label_ce_loss",
    "relation_kl_loss",
    "soft_dice_loss",
    "softmax_mse_loss",
    "supervised_loss",
    "weighted_dice_ce_loss",
]
