"""Synthetic cardiac-like phantoms: the project's own test and demo data, free of any licence.

Every slice holds nested structures shaped like a short-axis cine-MRI slice: a bright left-ventricle disk (LV,
3), a darker myocardium ring around it (Myo, 2) and a bright right-ventricle crescent beside it (RV, 1). Radii
shrink toward the apex (the last slices) and the RV vanishes there, so foreground stays small and the RV is
the rare class (background is about 90 % of the voxels or more). Per seed the sizes, the centre, the RV side
and the geometry vary.

Intensities are clearly distinct per class before degradation; then a partial-volume blur, a smooth
multiplicative bias field and Rician noise are applied, and a random gain puts them in an MRI-like range. The
grid is anisotropic with a non-zero origin and, with ``oblique=True``, a rotated direction, so geometry
handling is exercised too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from scipy import ndimage

from mona_core.io.nifti import Geometry, Volume, write_volume

logger = logging.getLogger(__name__)

PHANTOM_CLASSES: Final = ("background", "RV", "Myo", "LV")
DEFAULT_SHAPE: Final = (8, 96, 112)
DEFAULT_SPACING: Final = (1.5, 1.5, 8.0)
# Mean intensity of each region on a 0..1 scale, before blur, bias field and noise.
LEVELS: Final = {"air": 0.03, "tissue": 0.28, "rv": 0.78, "myo": 0.52, "lv": 1.0}


@dataclass(frozen=True)
class _Anatomy:
    """Per-slice centre and radii, each of shape ``(z, 1, 1)`` so they broadcast over a ``(z, y, x)`` grid."""

    cy: np.ndarray
    cx: np.ndarray
    r_lv: np.ndarray
    r_outer: np.ndarray
    r_rv: np.ndarray
    rv_dy: np.ndarray
    rv_dx: np.ndarray


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    oblique: bool = True,
) -> tuple[Volume, Volume]:
    """One phantom volume: (image float32, label uint8) on the same grid.

    ``shape`` is the numpy ``(z, y, x)`` shape; ``spacing`` is in SimpleITK ``(x, y, z)`` order (mm).
    """
    _check_shape(shape, spacing)
    rng = np.random.default_rng(seed)
    anatomy = _anatomy(rng, shape)
    label = _label_map(anatomy, shape)
    image = _render(rng, label, shape)
    geometry = _geometry(rng, shape, spacing, oblique)
    return Volume(array=image, geometry=geometry), Volume(array=label, geometry=geometry)


def write_phantom_case(
    image_path: str | Path,
    label_path: str | Path | None,
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    oblique: bool = True,
) -> tuple[Path, Path | None]:
    """Make one phantom and write its image (and its label unless ``label_path`` is None) as NIfTI."""
    image, label = make_phantom(seed, shape=shape, spacing=spacing, oblique=oblique)
    written_image = write_volume(image, image_path)
    written_label = write_volume(label, label_path) if label_path is not None else None
    return written_image, written_label


def write_phantom_dataset(
    root: str | Path,
    n_patients: int = 8,
    frames: int = 2,
    seed: int = 0,
    unlabelled_patients: int = 0,
    val_patients: int = 2,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
) -> Path:
    """Write an nnU-Net raw phantom dataset and return its folder.

    Cases are ``patientNNN_frameNN``; the last ``unlabelled_patients`` patients get no label files, and the
    last ``val_patients`` of the labelled patients form the ``val`` split of ``splits.json`` (everything else:
    train).
    """
    n_labelled = _check_counts(n_patients, frames, unlabelled_patients, val_patients)
    folder = Path(root)
    val_ids = {f"patient{p:03d}" for p in range(n_labelled - val_patients + 1, n_labelled + 1)}
    cases = []
    for patient in range(1, n_patients + 1):
        for frame in range(1, frames + 1):
            case_id = f"patient{patient:03d}_frame{frame:02d}"
            label = folder / "labelsTr" / f"{case_id}.nii.gz" if patient <= n_labelled else None
            case_seed = int(np.random.SeedSequence([seed, patient, frame]).generate_state(1)[0])
            write_phantom_case(folder / "imagesTr" / f"{case_id}_0000.nii.gz", label, case_seed, shape=shape)
            cases.append(case_id)
    _write_metadata(folder, cases, val_ids)
    logger.info("wrote %d phantom cases to %s", len(cases), folder)
    return folder


def _check_counts(n_patients: int, frames: int, unlabelled_patients: int, val_patients: int) -> int:
    """Validate the dataset writer's counts; return the number of labelled patients."""
    n_labelled = n_patients - unlabelled_patients
    if n_patients < 1 or frames < 1 or not 0 <= unlabelled_patients < n_patients:
        raise ValueError(
            f"expected n_patients >= 1, frames >= 1, 0 <= unlabelled_patients < n_patients, "
            f"got {n_patients}, {frames}, {unlabelled_patients}"
        )
    if not 0 <= val_patients <= n_labelled:
        raise ValueError(f"expected 0 <= val_patients <= {n_labelled} labelled patients, got {val_patients}")
    return n_labelled


def _write_metadata(folder: Path, cases: list[str], val_ids: set[str]) -> None:
    meta = {
        "name": "Phantom",
        "description": "Synthetic cardiac-like phantoms generated by mona_core.data.phantoms",
        "channel_names": {"0": "MRI"},
        "labels": {name: value for value, name in enumerate(PHANTOM_CLASSES)},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    splits = {
        "train": [c for c in cases if c.split("_frame")[0] not in val_ids],
        "val": [c for c in cases if c.split("_frame")[0] in val_ids],
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (folder / "splits.json").write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")


def _check_shape(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 16:
        raise ValueError(f"expected a (z, y, x) shape with z >= 1 and y, x >= 16, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"expected three positive spacings (x, y, z), got {spacing}")


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Anatomy:
    """Seeded sizes and positions; radii shrink from the base (slice 0) to the apex (last slice)."""
    depth, height, width = shape
    side = float(min(height, width))
    t = np.linspace(0.0, 1.0, depth) if depth > 1 else np.zeros(1)
    drift = np.cumsum(rng.normal(0.0, 0.6, size=(2, depth)), axis=1)
    cy = height * (0.5 + rng.uniform(-0.06, 0.06)) + drift[0]
    cx = width * (0.55 + rng.uniform(-0.06, 0.06)) + drift[1]
    r_lv = side * rng.uniform(0.10, 0.14) * (1.0 - 0.55 * t**1.3)
    r_outer = r_lv + side * rng.uniform(0.035, 0.05) * (1.0 - 0.3 * t)
    r_rv = r_outer * rng.uniform(1.0, 1.2) * np.clip(1.0 - 0.9 * t, 0.0, None)
    angle = np.pi + rng.uniform(-0.4, 0.4)
    offset = 0.85 * r_outer
    return _Anatomy(
        *(
            np.asarray(v, dtype=np.float32).reshape(depth, 1, 1)
            for v in (cy, cx, r_lv, r_outer, r_rv, offset * np.sin(angle), offset * np.cos(angle))
        )
    )


def _label_map(anatomy: _Anatomy, shape: tuple[int, int, int]) -> np.ndarray:
    _, height, width = shape
    yy = np.arange(height, dtype=np.float32).reshape(1, height, 1)
    xx = np.arange(width, dtype=np.float32).reshape(1, 1, width)
    dist = np.hypot(yy - anatomy.cy, xx - anatomy.cx)
    dist_rv = np.hypot(yy - anatomy.cy - anatomy.rv_dy, xx - anatomy.cx - anatomy.rv_dx)
    label = np.zeros(shape, dtype=np.uint8)
    label[(dist_rv < anatomy.r_rv) & (dist >= anatomy.r_outer + 1.0)] = 1
    label[(dist >= anatomy.r_lv) & (dist < anatomy.r_outer)] = 2
    label[dist < anatomy.r_lv] = 3
    return label


def _render(rng: np.random.Generator, label: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Class intensities on a textured body, then blur, bias field, Rician noise and a random gain."""
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(0.0, 3.0, 3.0))
    texture *= 0.06 / max(float(texture.std()), 1e-6)
    body = _body_mask(rng, shape)
    clean = np.where(body, LEVELS["tissue"] + texture, LEVELS["air"]).astype(np.float32)
    for value, key in ((1, "rv"), (2, "myo"), (3, "lv")):
        clean[label == value] = LEVELS[key] + 0.3 * texture[label == value]
    clean = ndimage.gaussian_filter(clean, sigma=(0.0, 0.7, 0.7)) * _bias_field(rng, shape)
    sigma = rng.uniform(0.025, 0.045)
    noisy = np.hypot(clean + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape))
    image: np.ndarray = (noisy * rng.uniform(300.0, 900.0)).astype(np.float32)
    return image


def _body_mask(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    _, height, width = shape
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32).reshape(1, height, 1)
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32).reshape(1, 1, width)
    ay, ax = rng.uniform(0.8, 0.92), rng.uniform(0.85, 0.95)
    mask: np.ndarray = np.broadcast_to((yy / ay) ** 2 + (xx / ax) ** 2 <= 1.0, shape)
    return mask


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth multiplicative field, roughly 0.8..1.2, varying in-plane and along z."""
    depth, height, width = shape
    zz = np.linspace(-1.0, 1.0, depth, dtype=np.float32).reshape(depth, 1, 1)
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32).reshape(1, height, 1)
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32).reshape(1, 1, width)
    a, b, c, d = rng.uniform(-0.12, 0.12, size=4)
    field: np.ndarray = np.exp(a * yy + b * xx + c * yy * xx + d * zz).astype(np.float32)
    return field


def _geometry(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float], oblique: bool
) -> Geometry:
    depth, height, width = shape
    origin = (
        -0.5 * width * spacing[0] + rng.uniform(-20.0, 20.0),
        -0.5 * height * spacing[1] + rng.uniform(-20.0, 20.0),
        rng.uniform(-60.0, 60.0) + 0.5,
    )
    direction = _rotation(rng) if oblique else np.eye(3)
    return Geometry(
        size=(width, height, depth),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in direction.reshape(-1)),
    )


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A proper rotation (det +1): 20-30 degrees about x, then -20..-30 degrees about y."""
    a, b = np.deg2rad(rng.uniform(20.0, 30.0)), np.deg2rad(-rng.uniform(20.0, 30.0))
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    rot_y = np.array([[np.cos(b), 0.0, np.sin(b)], [0.0, 1.0, 0.0], [-np.sin(b), 0.0, np.cos(b)]])
    result: np.ndarray = rot_x @ rot_y
    return result
