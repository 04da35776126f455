"""Baselines under the shared trainer: supervised UNet (UNET-L / UNET-F), Mean Teacher, Cross Pseudo Supervision."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mona_core.losses import cross_pseudo_supervision_loss, softmax_mse_loss, supervised_loss
from mona_core.models import UNet, UNetConfig, build_model
from mona_core.training.config import TrainConfig
from mona_core.training.methods.base import Batch, ema_update, frozen_copy, stage_rampup


class Supervised:
    """Dice + CE on the labelled slices only (unlabelled slices, if sampled, are ignored)."""

    name = "supervised"
    augments_unlabelled = False

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        self.model = build_model(model_config).to(device)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def eval_model(self) -> UNet:
        return self.model

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        return supervised_loss(self.model(batch.images), batch.labels)

    def after_step(self, step: int) -> None:
        del step

    def extra_state(self) -> dict[str, Any]:
        """Nothing beyond the networks and the global RNGs (which the trainer saves)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state


class MeanTeacher(Supervised):
    """L_sup + w(t) * MSE(softmax(student(x + n)), softmax(teacher(x + n'))) over all images; teacher = EMA."""

    name = "mean_teacher"

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        super().__init__(config, model_config, device)
        self.teacher = frozen_copy(self.model)
        self.config = config

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "teacher": self.teacher}

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images = batch.all_images
        logits = self.model(images)
        parts = supervised_loss(logits[: len(batch.images)], batch.labels)
        noise = torch.clamp(torch.randn_like(images) * 0.1, -0.2, 0.2)
        with torch.no_grad():
            teacher_logits = self.teacher(images + noise)
        weight = self.config.consistency_weight * stage_rampup(self.config, step)
        consistency = softmax_mse_loss(logits, teacher_logits)
        return {**parts, "loss": parts["loss"] + weight * consistency, "loss_consistency": consistency}

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.model, self.config.ema_decay)


class CrossPseudoSupervision(Supervised):
    """Two differently initialised UNets; each is supervised and learns from the other's argmax (CPS)."""

    name = "cps"

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        super().__init__(config, model_config, device)
        self.second = build_model(model_config).to(device)
        self.config = config

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "second": self.second}

    def trainable(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.second.parameters()]

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images = batch.all_images
        logits_a, logits_b = self.model(images), self.second(images)
        sup_a = supervised_loss(logits_a[: len(batch.images)], batch.labels)
        sup_b = supervised_loss(logits_b[: len(batch.images)], batch.labels)
        cps = cross_pseudo_supervision_loss(logits_a, logits_b)
        weight = self.config.consistency_weight * stage_rampup(self.config, step)
        total = sup_a["loss"] + sup_b["loss"] + weight * cps
        return {"loss": total, "loss_sup": sup_a["loss"], "loss_sup_second": sup_b["loss"], "loss_cps": cps}
