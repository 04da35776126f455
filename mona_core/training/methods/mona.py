"""MONA's two stages as methods of the shared trainer.

``GLCon`` (Section III-A, pre-training): a student and an EMA teacher (t = 0.99) with projection heads; the student's
predicted embedding u and the teacher's embedding v' of the same slice are compared by their similarity
distributions over a memory of k = 36 mined views (teacher embeddings of other unlabelled slices), globally on the
bottleneck and locally on 64x64 views of the output logits; plus L_sup. Loss: L_sup + r(t) (L_inst^global +
L_inst^local), r(t) the same sigmoid ramp-up as below: in the first steps the heads' BatchNorm sees three nearly
identical pooled bottlenecks and the global term's gradient on the UNet is 10-100x the supervised one.

``AnatomicalContrastiveReconstruction`` (Section III-B, fine-tuning): the teacher sees a weak view of each unlabelled
slice and gives pseudo-labels; the student sees a strong view made from that weak view, with the pseudo-labels
mixed and warped exactly like the image. Loss: L_sup + r(t) (λ1 L_contrast + λ2 L_eqv + λ3 L_unsup + λ4 L_nn), with
the three MONA terms switchable (tailness, consistency, diversity). r(t) is the sigmoid ramp-up the baselines use
(over ``rampup_fraction`` of the stage; 0 gives the λ at full weight from the first step): the pseudo-labels of an
early teacher are mostly background, and CE on them at full weight pulls the student there. Heads are training-only:
the exported model is the student UNet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mona_core.data.gpu_augment import (
    RandomAffineTransform,
    StrongAugmentConfig,
    strong_from_weak,
    weak_augment_batch,
)
from mona_core.losses import (
    ClassMemoryBank,
    EmbeddingQueue,
    anatomical_contrast_loss,
    equivariance_loss,
    nearest_neighbour_loss,
    relation_kl_loss,
    supervised_loss,
)
from mona_core.models import UNet, UNetConfig, build_model
from mona_core.models.heads import HeadsConfig, build_heads, random_local_views, sample_pixels
from mona_core.training.config import TrainConfig
from mona_core.training.methods.base import Batch, ema_update, frozen_copy, load_generator_state, stage_rampup

# GLCon's student view: the teacher's weak view with photometric changes only. CutMix or a deformation would move
# anatomy, and then neither the same-location local crops nor the global target describe what the student sees.
GLCON_STUDENT_AUGMENT = StrongAugmentConfig(cutmix_prob=0.0, deform_magnitude=0.0)


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0


class _StudentTeacher:
    """Shared parts: student UNet + heads, EMA teacher UNet + heads, a seeded generator on the device."""

    name = "student_teacher"
    augments_unlabelled = True

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        self.config = config
        self.model = build_model(model_config).to(device)
        self.heads = build_heads(HeadsConfig.from_unet(model_config, norm=config.head_norm)).to(device)
        self.teacher = frozen_copy(self.model)
        self.teacher_heads = frozen_copy(self.heads)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.device = device

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "heads": self.heads, "teacher": self.teacher, "teacher_heads": self.teacher_heads}

    def trainable(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.heads.parameters()]

    def eval_model(self) -> UNet:
        return self.model

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.model, self.config.ema_decay)
        ema_update(self.teacher_heads, self.heads, self.config.ema_decay)

    def extra_state(self) -> dict[str, Any]:
        """The method's generator and its memory banks: a resumed run draws and mines exactly as before."""
        return {"generator": self.generator.get_state(), **{k: b.state_dict() for k, b in self._banks().items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        load_generator_state(self.generator, state["generator"])
        for key, bank in self._banks().items():
            bank.load_state_dict(state[key])

    def _banks(self) -> dict[str, EmbeddingQueue | ClassMemoryBank]:
        return {}

    def _student_query(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """u = h'(h(z)): the student's predicted global embedding."""
        return self.heads.predictor(self.heads.projection(bottleneck))  # type: ignore[no-any-return]


class GLCon(_StudentTeacher):
    """GLCon pre-training (eq. 1-2, global and local) + L_sup."""

    name = "pretrain"

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        super().__init__(config, model_config, device)
        dim = self.heads.config.embed_dim
        self.global_memory = EmbeddingQueue(config.memory_size, dim, device=device)
        self.local_memory = EmbeddingQueue(config.memory_size, dim, device=device)

    def _banks(self) -> dict[str, EmbeddingQueue | ClassMemoryBank]:
        return {"global_memory": self.global_memory, "local_memory": self.local_memory}

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        teacher_view, _ = weak_augment_batch(batch.unlabelled, None, self.generator)
        student_view, _ = strong_from_weak(teacher_view, None, self.generator, GLCON_STUDENT_AUGMENT)
        images = torch.cat([batch.images, student_view])
        out = self.model.forward_features(images)
        parts = supervised_loss(out.logits[: len(batch.images)], batch.labels)
        with torch.no_grad():
            teacher_out = self.teacher.forward_features(teacher_view)
            teacher_global = self.teacher_heads.projection(teacher_out.bottleneck)
        student_global = self._student_query(out.bottleneck[len(batch.images) :])
        global_loss = self._instance(student_global, teacher_global, self.global_memory)
        local_loss = self._local(out.logits[len(batch.images) :], teacher_out.logits)
        ramp = stage_rampup(self.config, step)
        total = parts["loss"] + ramp * (global_loss + local_loss)
        return {
            **parts,
            "loss": total,
            "loss_inst_global": global_loss,
            "loss_inst_local": local_loss,
            "rampup": torch.tensor(ramp),
        }

    def _instance(self, student: torch.Tensor, teacher: torch.Tensor, memory: EmbeddingQueue) -> torch.Tensor:
        """Relation KL against the mined views in ``memory``; then this batch's teacher embeddings join it."""
        loss = (
            _zero(student)
            if len(memory) == 0
            else relation_kl_loss(student, teacher, memory.tensor(), self.config.tau_student, self.config.tau_teacher)
        )
        memory.push(teacher.detach())
        return loss

    def _local(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Local instance discrimination on views of the output logits cropped at the same locations."""
        size = self.config.local_view_size
        views_s, views_t = random_local_views(
            student_logits, teacher_logits, self.config.local_views, size, self.generator
        )
        student = self.heads.predictor(self.heads.local_projection(views_s))
        with torch.no_grad():
            teacher = self.teacher_heads.local_projection(views_t)
        return self._instance(student, teacher, self.local_memory)


class AnatomicalContrastiveReconstruction(_StudentTeacher):
    """MONA fine-tuning: tailness (eq. 3-5), consistency (eq. 6), diversity (nearest neighbours), L_unsup, L_sup."""

    name = "finetune"

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        super().__init__(config, model_config, device)
        rep_dim = self.heads.config.representation_dim
        self.class_bank = ClassMemoryBank(model_config.num_classes, config.num_negatives, rep_dim, device=device)
        self.neighbours = EmbeddingQueue(config.memory_size, self.heads.config.embed_dim, device=device)

    def _banks(self) -> dict[str, EmbeddingQueue | ClassMemoryBank]:
        return {"class_bank": self.class_bank, "neighbours": self.neighbours}

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        weak, _ = weak_augment_batch(batch.unlabelled, None, self.generator)
        with torch.no_grad():
            teacher_out = self.teacher.forward_features(weak)
            pseudo = teacher_out.logits.argmax(dim=1)
        strong, strong_pseudo = strong_from_weak(weak, pseudo, self.generator)
        assert strong_pseudo is not None
        labelled, labelled_labels = batch.images, batch.labels
        if self.config.strong_labelled:
            labelled, maybe_labels = strong_from_weak(batch.images, batch.labels, self.generator)
            assert maybe_labels is not None
            labelled_labels = maybe_labels
        images, labels = torch.cat([labelled, strong]), torch.cat([labelled_labels, strong_pseudo])
        out = self.model.forward_features(images)
        n_l = len(labelled)
        parts = supervised_loss(out.logits[:n_l], labelled_labels)
        terms = {"loss_unsup": F.cross_entropy(out.logits[n_l:], strong_pseudo)}
        terms["loss_contrast"] = (
            self._tailness(out.decoder, out.logits, labels) if self.config.tailness else _zero(out.logits)
        )
        terms["loss_eqv"] = self._consistency(images, out.logits) if self.config.consistency else _zero(out.logits)
        terms["loss_nn"] = (
            self._diversity(out.bottleneck[n_l:], teacher_out.bottleneck)
            if self.config.diversity
            else _zero(out.logits)
        )
        c = self.config
        unsupervised = c.contrast_weight * terms["loss_contrast"] + c.eqv_weight * terms["loss_eqv"]
        unsupervised = unsupervised + c.unsup_weight * terms["loss_unsup"] + c.nn_weight * terms["loss_nn"]
        ramp = stage_rampup(c, step)
        total = parts["loss"] + ramp * unsupervised
        return {**parts, **terms, "loss": total, "rampup": torch.tensor(ramp)}

    def _tailness(self, decoder: list[torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 3-5 on sampled pixels: queries chosen hard-first among ALL pixels of each class (eq. 5), a uniform
        sample for the class means and negative pools (eq. 4); only the sampled pixels are projected to 512-d."""
        c = self.config
        confidence = torch.softmax(logits.detach(), dim=1).gather(1, labels[:, None]).squeeze(1)
        fused = self.heads.representation.fuse(decoder)
        queries = sample_pixels(fused, labels, confidence, c.num_queries, self.generator, c.hard_threshold)
        keys = sample_pixels(fused, labels, confidence, c.num_queries, self.generator)
        return anatomical_contrast_loss(
            self.heads.representation.project(queries.features),
            queries.labels,
            queries.confidence,
            keys=self.heads.representation.project(keys.features),
            key_labels=keys.labels,
            num_queries=c.num_queries,
            num_negatives=c.num_negatives,
            hard_threshold=c.hard_threshold,
            tau=c.contrast_tau,
            bank=self.class_bank,
            generator=self.generator,
        )

    def _consistency(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Eq. 6 on the same x: T(F(x)) against F(T(x)), T a random affine (+ intensity change on the image)."""
        transform = RandomAffineTransform.sample(len(images), self.generator)
        moved = RandomAffineTransform.intensity(transform.apply(images), self.generator)
        valid = transform.valid_mask(images.shape, images.device).float()
        return equivariance_loss(transform.apply(logits), self.model(moved), valid)

    def _diversity(self, student_bottleneck: torch.Tensor, teacher_bottleneck: torch.Tensor) -> torch.Tensor:
        """Pull the student's u towards the K nearest teacher embeddings in the FIFO bank, then enqueue v'."""
        student = self._student_query(student_bottleneck)
        with torch.no_grad():
            teacher = self.teacher_heads.projection(teacher_bottleneck)
        loss = nearest_neighbour_loss(student, teacher, self.neighbours.tensor(), self.config.nn_k)
        self.neighbours.push(teacher)
        return loss
