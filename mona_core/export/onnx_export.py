"""Checkpoint -> ONNX model directory, with a torch-vs-onnxruntime parity check before anything is published.

The network is rebuilt from ``checkpoint["model_config"]`` and ``checkpoint["model"]`` (eval mode, CPU) and
exported at opset 17 with input ``image`` ``(batch, 1, S, S)`` and output ``logits`` ``(batch, C, S, S)``; the
batch axis is dynamic. Parity is measured on seeded random inputs and, when given, real slices, in batches of
a size other than the export batch (which proves the dynamic axis works). Everything is written into a hidden
sibling directory that is renamed onto ``out_dir`` only after every check passed, so a failed export leaves no
model directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mona_core.export.manifest import MODEL_FILE, OPSET, Manifest, ManifestError, sha256_file, write_manifest
from mona_core.models import UNet, UNetConfig, build_model

logger = logging.getLogger(__name__)

INPUT_NAME: Final = "image"
OUTPUT_NAME: Final = "logits"
EXPORT_BATCH: Final = 2
"""Batch of the dummy input traced at export; parity runs use other sizes to exercise the dynamic axis."""
PARITY_BATCH: Final = 3
EXPORTER: Final = "torch.onnx legacy TorchScript exporter (dynamo=False)"


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    manifest: Manifest


class ExportError(RuntimeError):
    """The export cannot produce a trustworthy model directory (bad checkpoint, failed parity, bad target)."""


def export_checkpoint(
    checkpoint: dict[str, Any],
    out_dir: str | Path,
    real_inputs: np.ndarray | None = None,
    tolerance: float = 1e-4,
    seed: int = 0,
    postprocess: str | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir`` (``model.onnx`` + ``manifest.json``) after a parity check.

    The manifest's ``postprocess`` is ``postprocess`` when given, else the run's (``train_config``), else "none".

    ``tolerance`` bounds the max absolute difference of logits between onnxruntime (CPU) and torch; a larger
    difference raises ExportError. ``real_inputs`` are optional network inputs ``(N, 1, S, S)`` float32
    (already normalised and resized, e.g. by ``image_to_slices``) for a second parity check on realistic data.
    """
    if not tolerance >= 0.0:
        raise ValueError(f"expected a non-negative parity tolerance, got {tolerance}")
    model, classes, preset, size = _rebuild(checkpoint)
    real = _check_real_inputs(real_inputs, size)
    target = Path(out_dir)
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        onnx_path = staging / MODEL_FILE
        _export_onnx(model, onnx_path, size)
        parity = _check_parity(model, onnx_path, size, real, tolerance, seed)
        manifest = _make_manifest(checkpoint, classes, preset, size, onnx_path, parity, postprocess)
        write_manifest(manifest, staging)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s (max |diff| %.2e <= %g)", target, parity["max_abs_diff_random"], tolerance)
    return ExportResult(model_dir=target, manifest=manifest)


def _rebuild(checkpoint: dict[str, Any]) -> tuple[UNet, tuple[str, ...], str, int]:
    """The eval-mode CPU network and the data facts (classes, preset, size) of a checkpoint dict."""
    for key in ("model_config", "model", "data"):
        if key not in checkpoint:
            raise ExportError(f"expected checkpoint key {key!r}, got keys {sorted(checkpoint)}")
    data = checkpoint["data"]
    try:
        config = UNetConfig.from_dict(checkpoint["model_config"])
        classes, preset, size = tuple(str(c) for c in data["classes"]), str(data["preset"]), int(data["size"])
    except (KeyError, TypeError, ValueError) as exc:
        message = f"expected a valid model_config and data {{classes, preset, size}}, got {exc!r}"
        raise ExportError(message) from exc
    if len(classes) != config.num_classes:
        raise ExportError(f"expected {config.num_classes} class names for the network, got {len(classes)}")
    stride = 2 ** (len(config.features) - 1)
    if size <= 0 or size % stride:
        raise ExportError(f"expected a slice size divisible by {stride}, got {size}")
    model = build_model(config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise ExportError(f"expected weights matching the model_config, got a mismatch: {exc}") from exc
    return model.cpu().eval(), classes, preset, size


def _check_real_inputs(real_inputs: np.ndarray | None, size: int) -> np.ndarray | None:
    if real_inputs is None:
        return None
    if real_inputs.ndim != 4 or real_inputs.shape[1:] != (1, size, size) or real_inputs.shape[0] == 0:
        raise ExportError(f"expected real inputs of shape (N>0, 1, {size}, {size}), got {real_inputs.shape}")
    if not np.isfinite(real_inputs).all():
        raise ExportError("expected finite real inputs, got NaN or infinite values")
    return np.ascontiguousarray(real_inputs, dtype=np.float32)


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"expected an empty or new output directory, got a non-empty {target}")


def _export_onnx(model: UNet, path: Path, size: int) -> None:
    """Write the ONNX graph.

    Exporter choice (measured with torch 2.13, onnxscript 0.7.2, 2 CPU cores): the legacy TorchScript
    exporter (``dynamo=False``) emits opset 17 natively in ~0.15 s. The default dynamo exporter only
    implements opset >= 18 and reaches 17 through a fallback onnx version conversion (it warns so), taking
    ~3.7 s and printing progress lines. Both gave the same numbers (max |diff| ~3e-8 vs torch on a random
    UNet) and a working dynamic batch axis, but the dynamo one also put the weights in a separate
    ``model.onnx.data`` file that the single-file sha256 pin would not cover. So the legacy exporter wins:
    native opset 17, one file, 25x faster, quiet. Its DeprecationWarning is silenced here. Revisit if a later
    torch drops ``dynamo=False``.
    """
    dummy = torch.zeros(EXPORT_BATCH, 1, size, size)
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
            dynamo=False,
        )
    logger.info("ONNX export took %.2f s", time.perf_counter() - start)
    _check_graph(path)


def _check_graph(path: Path) -> None:
    """onnx.checker plus the contract inference relies on: opset 17 and the tensor names."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"expected a valid ONNX graph, got a checker error: {exc}") from exc
    graph_model = onnx.load(str(path), load_external_data=False)
    opsets = {entry.domain: entry.version for entry in graph_model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise ExportError(f"expected ONNX opset {OPSET}, got {opsets}")
    names = ([i.name for i in graph_model.graph.input], [o.name for o in graph_model.graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"expected input {[INPUT_NAME]} and output {[OUTPUT_NAME]}, got {names}")


def _check_parity(
    model: UNet, onnx_path: Path, size: int, real: np.ndarray | None, tolerance: float, seed: int
) -> dict[str, Any]:
    """Compare onnxruntime (CPU) and torch logits; raise ExportError when they differ beyond tolerance."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    random_inputs = rng.random((PARITY_BATCH, 1, size, size), dtype=np.float32)
    diff_random, _ = _compare(model, session, random_inputs)
    diff_real, agreement = _compare(model, session, real) if real is not None else (None, None)
    parity: dict[str, Any] = {
        "tolerance": tolerance,
        "max_abs_diff_random": diff_random,
        "max_abs_diff_real": diff_real,
        "argmax_agreement_real": agreement,
        "batch_checked": PARITY_BATCH,
        "export_batch": EXPORT_BATCH,
    }
    worst = max(diff_random, diff_real if diff_real is not None else 0.0)
    if not worst <= tolerance:
        raise ExportError(f"expected ONNX logits within {tolerance} of torch, got max |diff| {worst:.3e}")
    return parity


def _compare(model: UNet, session: ort.InferenceSession, inputs: np.ndarray) -> tuple[float, float]:
    """Max |logit diff| and argmax agreement (fraction of pixels) over ``inputs``, in PARITY_BATCH chunks."""
    worst, agree, total = 0.0, 0, 0
    for start in range(0, inputs.shape[0], PARITY_BATCH):
        batch = inputs[start : start + PARITY_BATCH]
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).numpy()
        actual = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
        if actual.shape != expected.shape:
            raise ExportError(f"expected ONNX logits of shape {expected.shape}, got {actual.shape}")
        _check_finite(expected, actual)
        worst = max(worst, float(np.abs(actual - expected).max()))
        agree += int((actual.argmax(axis=1) == expected.argmax(axis=1)).sum())
        total += expected.shape[0] * expected.shape[2] * expected.shape[3]
    return worst, agree / total


def _check_finite(expected: np.ndarray, actual: np.ndarray) -> None:
    """Fail parity on NaN or infinite logits: a NaN difference would otherwise vanish in ``max`` (and NaN from a
    diverged network is 'equal' in torch and ONNX alike)."""
    for name, logits in (("torch", expected), ("ONNX", actual)):
        bad = int(np.count_nonzero(~np.isfinite(logits)))
        if bad:
            raise ExportError(
                f"expected finite {name} logits, got {bad} NaN or infinite of {logits.size} (non-finite weights?)"
            )


def _make_manifest(
    checkpoint: dict[str, Any],
    classes: tuple[str, ...],
    preset: str,
    size: int,
    onnx_path: Path,
    parity: dict[str, Any],
    postprocess: str | None = None,
) -> Manifest:
    train_config = _json_safe(dict(checkpoint.get("train_config") or {}))
    source = {
        "checkpoint_step": int(checkpoint.get("step", 0)),
        "best": _json_safe(checkpoint.get("best")),
        "exporter": EXPORTER,
        "torch_version": str(torch.__version__),
    }
    try:
        return Manifest(
            classes=classes,
            preset=preset,
            size=size,
            opset=OPSET,
            onnx_sha256=sha256_file(onnx_path),
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            model_config=_json_safe(dict(checkpoint["model_config"])),
            train_config=train_config,
            parity=parity,
            source=source,
            postprocess=postprocess or str(train_config.get("postprocess", "none")),
        )
    except ManifestError as exc:
        raise ExportError(f"expected checkpoint data that makes a valid manifest, got: {exc}") from exc


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: numpy/torch scalars become numbers, other objects (paths) strings."""

    def fallback(item: Any) -> Any:
        return item.item() if hasattr(item, "item") else str(item)

    return json.loads(json.dumps(value, default=fallback))


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished staging directory onto ``target`` (new or empty) in one step."""
    staging.chmod(0o755)
    try:
        os.replace(staging, target)
    except OSError as exc:
        raise ExportError(f"expected an empty or new output directory, got {target} ({exc.strerror})") from (exc)
