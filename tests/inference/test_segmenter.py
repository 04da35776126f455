"""Torch-free inference: providers, slice prediction, and masks written on exactly the input's grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import SimpleITK as sitk

from mona_core.export import MANIFEST_FILE, MODEL_FILE, ManifestError, export_checkpoint
from mona_core.inference import Segmenter, available_providers
from mona_core.io import Geometry, Volume, read_image, read_label, write_volume
from tests.export.test_export import CLASSES, SIZE, tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _oblique_direction() -> tuple[float, ...]:
    """A proper rotation (orthonormal, det +1) about a tilted axis: no axis-aligned shortcut can pass."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    angle = 0.6
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew
    return tuple(float(v) for v in rotation.ravel())


GEOMETRY = Geometry(
    size=(52, 40, 5), spacing=(0.7, 1.3, 6.0), origin=(-12.5, 30.25, 7.0), direction=_oblique_direction()
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(tiny_checkpoint(), tmp_path_factory.mktemp("inference") / "model").model_dir


@pytest.fixture(scope="module")
def segmenter(model_dir: Path) -> Segmenter:
    return Segmenter(model_dir, device="cpu", batch_size=2, threads=1)


def _volume() -> Volume:
    z, y, x = GEOMETRY.shape
    grid = np.mgrid[0:z, 0:y, 0:x].astype(np.float32)
    array = 100.0 * np.sin(grid[1] / 5.0) * np.cos(grid[2] / 7.0) + 10.0 * grid[0]
    return Volume(array=array.astype(np.float32), geometry=GEOMETRY)


def test_inference_does_not_import_torch() -> None:
    code = "import sys, mona_core.inference; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_auto_provider_is_cpu_here_and_cuda_first_when_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert available_providers("auto") == ["CPUExecutionProvider"]
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: offered)
    assert available_providers("auto") == offered
    assert available_providers("cuda") == offered
    assert available_providers("cpu") == ["CPUExecutionProvider"]


def test_cuda_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="expected onnxruntime with CUDAExecutionProvider for device 'cuda'"):
        available_providers("cuda")
    with pytest.raises(ValueError, match="expected a device in"):
        available_providers("tpu")


def test_predict_slices_returns_logits_for_any_batch(segmenter: Segmenter) -> None:
    for batch in (1, 5):
        logits = segmenter.predict_slices(np.zeros((batch, 1, SIZE, SIZE), dtype=np.float32))
        assert logits.shape == (batch, len(CLASSES), SIZE, SIZE)
        assert logits.dtype == np.float32
    with pytest.raises(ValueError, match=r"expected slices of shape \(N, 1, 32, 32\), got \(2, 1, 16, 16\)"):
        segmenter.predict_slices(np.zeros((2, 1, 16, 16), dtype=np.float32))


def test_segment_keeps_the_exact_grid_through_a_file_round_trip(segmenter: Segmenter, tmp_path: Path) -> None:
    image_path = write_volume(_volume(), tmp_path / "image.nii.gz")
    mask_path = segmenter.segment_file(image_path, tmp_path / "out" / "mask.nii.gz")
    written = read_label(mask_path, num_classes=len(CLASSES))
    assert written.geometry.size == GEOMETRY.size
    np.testing.assert_allclose(np.array(written.geometry.spacing), np.array(GEOMETRY.spacing), atol=1e-5)
    np.testing.assert_allclose(np.array(written.geometry.origin), np.array(GEOMETRY.origin), atol=1e-5)
    np.testing.assert_allclose(np.array(written.geometry.direction), np.array(GEOMETRY.direction), atol=1e-5)
    assert sitk.ReadImage(str(mask_path)).GetPixelID() == sitk.sitkUInt8
    mask = written.array
    assert mask.shape == (5, 40, 52)
    np.testing.assert_array_equal(mask, segmenter.segment_array(read_image(image_path).array))


def test_segment_returns_the_input_geometry_object(segmenter: Segmenter) -> None:
    volume = _volume()
    mask = segmenter.segment(volume)
    assert mask.geometry == volume.geometry
    assert mask.array.dtype == np.uint8 and mask.array.shape == volume.array.shape


def test_batch_size_does_not_change_the_mask(segmenter: Segmenter, model_dir: Path) -> None:
    array = _volume().array
    whole = Segmenter(model_dir, device="cpu", batch_size=16)
    np.testing.assert_array_equal(segmenter.segment_array(array), whole.segment_array(array))


def test_bad_volumes_are_rejected(segmenter: Segmenter) -> None:
    with pytest.raises(ValueError, match="expected a non-empty \\(z, y, x\\) volume, got shape \\(4, 4\\)"):
        segmenter.segment_array(np.zeros((4, 4), dtype=np.float32))
    array = np.zeros((2, 8, 8), dtype=np.float32)
    array[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="expected finite intensities"):
        segmenter.segment_array(array)


def test_tampered_model_is_refused_at_load(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / MODEL_FILE).write_bytes((model_dir / MODEL_FILE).read_bytes() + b"\0")
    data = json.loads((model_dir / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="tampered or corrupt"):
        Segmenter(copy)


def test_invalid_settings_are_rejected(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="expected a batch size >= 1, got 0"):
        Segmenter(model_dir, batch_size=0)
    with pytest.raises(ValueError, match="expected threads >= 1 or None, got 0"):
        Segmenter(model_dir, threads=0)


@pytest.mark.gpu
def test_cuda_provider_gives_the_cpu_mask(model_dir: Path, segmenter: Segmenter) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is the GPU image's)")
    on_gpu = Segmenter(model_dir, device="cuda", batch_size=2)
    assert on_gpu.providers[0] == "CUDAExecutionProvider"
    volume = _volume()
    slices = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_allclose(on_gpu.predict_slices(slices), segmenter.predict_slices(slices), atol=1e-3)
    assert np.array_equal(on_gpu.segment_array(volume.array), segmenter.segment_array(volume.array))
