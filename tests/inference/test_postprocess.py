"""Post-processing of predicted masks (``largest_component``): what it keeps, and that every path that predicts
applies the run's choice — validation during training, the exported manifest, the segmenter and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mona_core.data.dataset import load_dataset
from mona_core.data.slicing import keep_largest_components, postprocess_mask, predict_volume
from mona_core.data.splits import select_labelled
from mona_core.export import MANIFEST_FILE, ManifestError, export_checkpoint, read_manifest
from mona_core.export.manifest import Manifest
from mona_core.inference import Segmenter
from mona_core.models import UNetConfig, build_model
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.slices import load_val_cases
from mona_core.training.trainer import train
from mona_core.training.validation import validate
from tests.export.test_export import tiny_checkpoint


def test_each_class_keeps_its_largest_component_and_nothing_else() -> None:
    mask = np.zeros((3, 12, 12), np.uint8)
    mask[0:3, 1:6, 1:6] = 1  # 75 voxels: class 1's largest
    mask[1, 9:11, 9:11] = 1  # 4 voxels, apart: removed
    mask[1, 7, 1] = 2  # 1 voxel: removed
    mask[0:2, 7:11, 5:9] = 2  # 32 voxels: class 2's largest, touching class 1 only at a corner
    mask[2, 0, 11] = 3  # class 3's only component stays, however small
    kept = keep_largest_components(mask)
    expected = mask.copy()
    expected[1, 9:11, 9:11] = 0
    expected[1, 7, 1] = 0
    assert np.array_equal(kept, expected)
    assert np.array_equal(keep_largest_components(kept), kept)  # idempotent
    assert np.array_equal(postprocess_mask(mask, "none"), mask)
    with pytest.raises(ValueError, match="post-processing"):
        postprocess_mask(mask, "biggest")


def test_components_connect_through_faces_across_slices_not_through_corners() -> None:
    mask = np.zeros((2, 6, 6), np.uint8)
    mask[0, 0:3, 0:3] = 1  # 9
    mask[1, 2:4, 2:4] = 1  # 4, sharing a face with the first across the slices: one component of 13
    mask[0, 5, 5] = 1
    mask[1, 4, 4] = 1  # corner contact with the 4-block only: a separate component
    kept = keep_largest_components(mask)
    assert kept.sum() == 13 and kept[0, 5, 5] == 0 and kept[1, 4, 4] == 0


def _two_blob_predict(batch: np.ndarray) -> np.ndarray:
    """Logits that call class 1 in a large block and a small separate block of every slice."""
    n, _, size, _ = batch.shape
    logits = np.zeros((n, 2, size, size), np.float32)
    logits[:, 0] = 1.0
    logits[:, 1, 2:12, 2:12] = 5.0
    logits[:, 1, 20:23, 20:23] = 5.0
    return logits


def test_predict_volume_post_processes_the_whole_mask() -> None:
    volume = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    plain = predict_volume(volume, _two_blob_predict, "mri", 32)
    kept = predict_volume(volume, _two_blob_predict, "mri", 32, postprocess="largest_component")
    assert plain[:, 21, 21].all() and not kept[:, 21, 21].any() and kept[:, 5, 5].all()
    assert np.array_equal(kept, keep_largest_components(plain))
    with pytest.raises(ValueError, match="post-processing"):
        predict_volume(volume, _two_blob_predict, "mri", 32, postprocess="largest")


def test_the_manifest_carries_the_runs_choice_or_the_exports(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint()
    checkpoint["train_config"] = {"postprocess": "largest_component"}
    assert export_checkpoint(checkpoint, tmp_path / "run").manifest.postprocess == "largest_component"
    assert read_manifest(tmp_path / "run").postprocess == "largest_component"
    override = export_checkpoint(checkpoint, tmp_path / "override", postprocess="none")
    assert override.manifest.postprocess == "none"
    assert export_checkpoint(tiny_checkpoint(), tmp_path / "default").manifest.postprocess == "none"


def test_an_older_manifest_without_it_loads_as_none_and_an_unknown_value_is_refused(tmp_path: Path) -> None:
    model_dir = export_checkpoint(tiny_checkpoint(), tmp_path / "model").model_dir
    data = json.loads((model_dir / MANIFEST_FILE).read_text())
    del data["postprocess"]
    assert Manifest.from_dict(data).postprocess == "none"
    with pytest.raises(ManifestError, match="postprocess"):
        Manifest.from_dict({**data, "postprocess": "fill_holes"})
    with pytest.raises(ValueError, match="post-processing"):
        Segmenter(model_dir, device="cpu", postprocess="fill_holes")


def test_the_segmenter_applies_the_manifests_choice_unless_told_otherwise(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint()  # random weights: masks in scattered pieces
    checkpoint["train_config"] = {"postprocess": "largest_component"}
    model_dir = export_checkpoint(checkpoint, tmp_path / "model").model_dir
    volume = np.random.default_rng(1).random((4, 40, 36)).astype(np.float32) * 300
    from_manifest = Segmenter(model_dir, device="cpu", threads=1).segment_array(volume)
    plain = Segmenter(model_dir, device="cpu", threads=1, postprocess="none").segment_array(volume)
    assert not np.array_equal(plain, keep_largest_components(plain))  # there is something to remove
    assert np.array_equal(from_manifest, keep_largest_components(plain))


def test_validation_during_training_scores_the_post_processed_masks(phantom_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    config = TrainConfig(
        size=32, iterations=40, val_every=40, checkpoint_every=40, device="cpu", postprocess="largest_component"
    )
    train(config, index, selection, tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    model = build_model(UNetConfig.from_dict(saved["model_config"]))
    model.load_state_dict(saved["model"])
    cases, classes = load_val_cases(index), index.classes

    def score(postprocess: str) -> float:
        report = validate(model, cases, classes, "mri", 32, torch.device("cpu"), postprocess=postprocess)
        return float(report["mean"]["dice"])

    recorded = saved["best"]["val_dice"]
    assert recorded == pytest.approx(score("largest_component")) and recorded != pytest.approx(score("none"))
