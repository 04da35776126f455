"""Torch-free segmentation with an exported model directory (numpy + SimpleITK + onnxruntime only).

Pre- and post-processing are the training code's own (``mona_core.data.slicing.predict_volume``): the
preset normalises the raw volume, slices are resized to the manifest's square size, and the softmax
probabilities are resized back linearly and argmaxed on the input's grid. The mask is written on exactly the
input's grid (size, spacing, origin, direction), so it overlays the image in any viewer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime as ort

from mona_core.data.slicing import RESAMPLING, check_postprocess, predict_volume
from mona_core.export.manifest import Manifest, ManifestError, load_model_dir
from mona_core.io.nifti import Volume, read_image, write_mask

logger = logging.getLogger(__name__)

CPU: Final = "CPUExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
DEVICES: Final = ("auto", "cpu", "cuda")


def available_providers(prefer: str = "auto") -> list[str]:
    """onnxruntime execution providers for a device preference, best first.

    ``auto``: CUDA first when this onnxruntime build offers it, then CPU. ``cpu``: CPU only. ``cuda``: CUDA
    required (ValueError when absent), with CPU kept as onnxruntime's fallback for any op CUDA lacks.
    """
    if prefer not in DEVICES:
        raise ValueError(f"expected a device in {DEVICES}, got {prefer!r}")
    offered = ort.get_available_providers()
    if prefer == "cpu":
        return [CPU]
    if CUDA in offered:
        return [CUDA, CPU]
    if prefer == "cuda":
        raise ValueError(
            f"expected onnxruntime with {CUDA} for device 'cuda' (onnxruntime-gpu on a CUDA machine), "
            f"got providers {offered}"
        )
    return [CPU]


class Segmenter:
    """A verified model directory loaded into an onnxruntime session, ready to segment volumes.

    The ONNX file's sha256 is checked against the manifest before the session is built. ``batch_size`` is
    the number of slices per onnxruntime call; ``threads`` sets intra-op threads (None: onnxruntime's
    default); ``resample`` how outputs return to the input grid (``mona_core.data.slicing.RESAMPLING``);
    ``postprocess`` what is done to each mask (``mona_core.data.slicing.POSTPROCESSING``; None: the manifest's).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        batch_size: int = 16,
        threads: int | None = None,
        resample: str = "probabilities",
        postprocess: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected a batch size >= 1, got {batch_size}")
        if resample not in RESAMPLING:
            raise ValueError(f"expected a resampling in {RESAMPLING}, got {resample!r}")
        self.resample = resample
        if threads is not None and threads < 1:
            raise ValueError(f"expected threads >= 1 or None, got {threads}")
        if postprocess is not None:
            check_postprocess(postprocess)
        onnx_path, self.manifest = load_model_dir(model_dir)
        self.postprocess = self.manifest.postprocess if postprocess is None else postprocess
        self.batch_size = batch_size
        self.session = _make_session(onnx_path, available_providers(device), threads)
        if device == "cuda" and CUDA not in self.session.get_providers():
            raise ValueError(f"expected the session to run on {CUDA}, got {self.session.get_providers()}")
        _check_io(self.session, self.manifest)
        logger.info("loaded %s on %s", model_dir, self.session.get_providers()[0])

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, best first."""
        return list(self.session.get_providers())

    def predict_slices(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(N, C, S, S)`` of network inputs ``(N, 1, S, S)`` (normalised, resized slices)."""
        size = self.manifest.size
        if batch.ndim != 4 or batch.shape[1:] != (1, size, size):
            raise ValueError(f"expected slices of shape (N, 1, {size}, {size}), got {batch.shape}")
        if batch.shape[0] == 0:
            return np.empty((0, self.manifest.num_classes, size, size), dtype=np.float32)
        inputs = {self.manifest.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return np.asarray(self.session.run([self.manifest.output_name], inputs)[0])

    def segment_array(self, array: np.ndarray) -> np.ndarray:
        """A uint8 mask ``(z, y, x)`` of a raw volume ``(z, y, x)``; labels index ``manifest.classes``."""
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(f"expected a non-empty (z, y, x) volume, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("expected finite intensities, got NaN or infinite voxels")
        manifest = self.manifest
        return predict_volume(
            array,
            self.predict_slices,
            manifest.preset,
            manifest.size,
            self.batch_size,
            resample=self.resample,
            postprocess=self.postprocess,
        )

    def segment(self, volume: Volume) -> Volume:
        """The mask of ``volume`` on exactly ``volume.geometry``."""
        return Volume(array=self.segment_array(volume.array), geometry=volume.geometry)

    def segment_file(self, in_path: str | Path, out_path: str | Path) -> Path:
        """Read an image file (NIfTI, MHA, NRRD), segment it and write the uint8 mask (same grid) to ``out_path``
        (format by its suffix)."""
        mask = self.segment(read_image(in_path))
        return write_mask(mask.array, mask.geometry, out_path)


def _make_session(onnx_path: Path, providers: list[str], threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider-assignment notices are noise for users
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


def _check_io(session: ort.InferenceSession, manifest: Manifest) -> None:
    """The graph must have the manifest's tensor names and slice size, else inference fails obscurely."""
    inputs = [(node.name, node.shape) for node in session.get_inputs()]
    outputs = [node.name for node in session.get_outputs()]
    if len(inputs) != 1 or inputs[0][0] != manifest.input_name or outputs != [manifest.output_name]:
        raise ManifestError(
            f"expected one input {manifest.input_name!r} and output {manifest.output_name!r}, "
            f"got inputs {[name for name, _ in inputs]} and outputs {outputs}"
        )
    spatial = list(inputs[0][1][-2:])
    if spatial != [manifest.size, manifest.size]:
        raise ManifestError(f"expected the graph input to be {manifest.size}x{manifest.size}, got {spatial}")
