"""Export: manifest contents, sha256 pinning, ONNX-vs-torch parity at any batch, atomic publication."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mona_core.export import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MODEL_FILE,
    OPSET,
    ExportError,
    ExportResult,
    Manifest,
    ManifestError,
    export_checkpoint,
    load_model_dir,
    onnx_export,
    sha256_file,
)
from mona_core.models import UNetConfig, build_model

CLASSES = ["background", "RV", "Myo", "LV"]
SIZE = 32
REPO = Path(__file__).resolve().parents[2]


def tiny_checkpoint(size: int = SIZE, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised 4-class UNet checkpoint dict with the keys the exporter reads."""
    torch.manual_seed(seed)
    config = UNetConfig(num_classes=len(CLASSES))
    model = build_model(config)
    return {
        "format": "mona-checkpoint/1",
        "step": 7,
        "model_config": config.to_dict(),
        "model": model.state_dict(),
        "train_config": {"lr": 0.01, "run_dir": Path("/tmp/run")},
        "data": {"classes": CLASSES, "preset": "mri", "size": size},
        "best": {"step": 5, "val_dice": np.float32(0.5)},
    }


def _torch_model(checkpoint: dict[str, Any]) -> torch.nn.Module:
    model = build_model(UNetConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, Any]:
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def exported(checkpoint: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "model")


def test_model_dir_holds_exactly_the_model_and_manifest(exported: ExportResult) -> None:
    assert sorted(p.name for p in exported.model_dir.iterdir()) == sorted([MANIFEST_FILE, MODEL_FILE])
    assert [p.name for p in exported.model_dir.parent.iterdir()] == [exported.model_dir.name]


def test_manifest_fields(exported: ExportResult, checkpoint: dict[str, Any]) -> None:
    manifest = load_model_dir(exported.model_dir)[1]
    assert manifest == exported.manifest
    assert manifest.format == MANIFEST_FORMAT
    assert manifest.classes == tuple(CLASSES)
    assert (manifest.preset, manifest.size, manifest.opset) == ("mri", SIZE, OPSET)
    assert (manifest.input_name, manifest.output_name) == ("image", "logits")
    assert manifest.model_config == checkpoint["model_config"]
    assert manifest.train_config == {"lr": 0.01, "run_dir": "/tmp/run"}
    assert manifest.source["checkpoint_step"] == 7
    assert manifest.source["best"] == {"step": 5, "val_dice": 0.5}
    assert manifest.parity["tolerance"] == 1e-4
    assert 0.0 <= manifest.parity["max_abs_diff_random"] <= 1e-4
    assert manifest.parity["max_abs_diff_real"] is None
    assert manifest.parity["argmax_agreement_real"] is None


def test_manifest_sha256_matches_the_onnx_file(exported: ExportResult) -> None:
    assert exported.manifest.onnx_sha256 == sha256_file(exported.model_dir / MODEL_FILE)


def test_graph_is_opset_17_with_a_dynamic_batch(exported: ExportResult) -> None:
    graph_model = onnx.load(str(exported.model_dir / MODEL_FILE))
    onnx.checker.check_model(graph_model)
    assert {entry.domain: entry.version for entry in graph_model.opset_import}[""] == OPSET
    dims = graph_model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_torch(exported: ExportResult, checkpoint: dict[str, Any], batch: int) -> None:
    inputs = np.random.default_rng(batch).random((batch, 1, SIZE, SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(exported.model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    actual = session.run(["logits"], {"image": inputs})[0]
    with torch.no_grad():
        expected = _torch_model(checkpoint)(torch.from_numpy(inputs)).numpy()
    assert actual.shape == (batch, len(CLASSES), SIZE, SIZE)
    np.testing.assert_allclose(actual, expected, rtol=0.0, atol=1e-4)


def test_real_inputs_are_checked_and_recorded(checkpoint: dict[str, Any], tmp_path: Path) -> None:
    real = np.random.default_rng(1).random((4, 1, SIZE, SIZE), dtype=np.float32)
    parity = export_checkpoint(checkpoint, tmp_path / "m", real_inputs=real).manifest.parity
    assert 0.0 <= parity["max_abs_diff_real"] <= 1e-4
    assert parity["argmax_agreement_real"] > 0.99
    with pytest.raises(ExportError, match="expected real inputs of shape"):
        export_checkpoint(checkpoint, tmp_path / "bad", real_inputs=real[:, :, :16])


def test_sha_mismatch_is_refused(exported: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / MODEL_FILE).write_bytes((exported.model_dir / MODEL_FILE).read_bytes())
    data = exported.manifest.to_dict()
    data["onnx_sha256"] = "0" * 64
    (copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"expected model\.onnx with sha256"):
        load_model_dir(copy)


def test_tampered_onnx_is_refused(exported: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / MANIFEST_FILE).write_bytes((exported.model_dir / MANIFEST_FILE).read_bytes())
    (copy / MODEL_FILE).write_bytes((exported.model_dir / MODEL_FILE).read_bytes()[:-10])
    with pytest.raises(ManifestError, match="tampered or corrupt"):
        load_model_dir(copy)
    (copy / MODEL_FILE).unlink()
    with pytest.raises(ManifestError, match=r"expected model\.onnx in"):
        load_model_dir(copy)


def test_failed_parity_leaves_no_directory(
    checkpoint: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "_compare", lambda *args: (0.5, 0.0))
    with pytest.raises(ExportError, match=r"expected ONNX logits within 0.0001 of torch, got max \|diff\|"):
        export_checkpoint(checkpoint, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_negative_tolerance_is_rejected(checkpoint: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a non-negative parity tolerance"):
        export_checkpoint(checkpoint, tmp_path / "model", tolerance=-1.0)


def test_non_empty_output_directory_is_refused(checkpoint: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="expected an empty or new output directory"):
        export_checkpoint(checkpoint, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_empty_output_directory_is_used(checkpoint: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    result = export_checkpoint(checkpoint, tmp_path / "model")
    assert (result.model_dir / MODEL_FILE).is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": 40}, "expected a slice size divisible by 16"),
        ({"classes": ["background", "RV"]}, "expected 4 class names"),
        ({"classes": ["RV", "Myo", "LV", "background"]}, "expected classes\\[0\\] == 'background'"),
        ({"preset": "pet"}, "expected a preset in"),
    ],
)
def test_inconsistent_checkpoint_is_refused(
    checkpoint: dict[str, Any], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    bad = {**checkpoint, "data": {**checkpoint["data"], **change}}
    with pytest.raises(ExportError, match=message):
        export_checkpoint(bad, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_manifest_round_trip_and_validation(exported: ExportResult) -> None:
    data = exported.manifest.to_dict()
    assert Manifest.from_dict(json.loads(json.dumps(data))) == exported.manifest
    with pytest.raises(ManifestError, match="expected manifest format 'mona-model/1', got 'other/2'"):
        Manifest.from_dict({**data, "format": "other/2"})
    with pytest.raises(ManifestError, match="got none for \\['parity'\\]"):
        Manifest.from_dict({key: value for key, value in data.items() if key != "parity"})
    with pytest.raises(ManifestError, match="expected 'size' to be int, got str"):
        Manifest.from_dict({**data, "size": "32"})


def test_export_package_and_manifest_do_not_import_torch() -> None:
    code = "import sys, mona_core.export, mona_core.export.manifest; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
