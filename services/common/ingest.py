"""Validation and storing of uploaded cases (torch-free: used by the API and reusable by a worker).

A case goes through three steps, and nothing reaches the store before every case of a request has passed the first:

1. ``check_case``: the image and label files, still in ``tmp/``, are checked — a NIfTI file name; a header whose
   voxel count is at most ``max_voxels`` and whose (decompressed) data is no more than 1 MiB beyond what the header
   declares (a gzip bomb is never fully inflated); then ``read_image`` (empty, truncated, not NIfTI, NaN / inf,
   4D) and ``read_label`` on the image grid with values in ``0..C-1``.
2. ``store_cases``: the checked files move into the content-addressed store and the ``Case`` rows are inserted
   in one transaction. If the transaction fails, objects no row references are removed again.
3. The caller discards whatever staging files remain.

``cases_from_nnunet`` lists the cases of an unpacked nnU-Net raw folder (``imagesTr``, ``labelsTr``, optional
``dataset.json`` and ``splits.json``) through ``mona_core.data.load_nnunet_raw``, plus ``imagesTs`` (unlabelled
scans, split ``test``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mona_core.data.dataset import CHANNEL_SUFFIX, load_nnunet_raw, patient_of
from mona_core.io import IMAGE_SUFFIXES, Geometry, NiftiError, image_suffix, read_image, read_label
from services.common.models import Case, Dataset, Segmentation
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_NIFTI_END = re.compile(r"(_0000)?\.(nii(\.gz)?|mha|nrrd)$", re.IGNORECASE)


class IngestError(ValueError):
    """A case (or a batch of cases) that cannot be ingested as sent; the API answers 422."""


class DuplicateCaseError(IngestError):
    """A case id already present in the dataset; the API answers 409."""


@dataclass(frozen=True)
class StagedCase:
    """A case whose files are still in ``tmp/``; ``label`` is None for an unlabelled case."""

    case_id: str
    patient_id: str
    split: str
    image: Path
    label: Path | None
    image_name: str = ""  # the names the client used, for messages
    label_name: str = ""


@dataclass(frozen=True)
class CheckedCase:
    """A staged case that passed every check, with its image grid."""

    staged: StagedCase
    geometry: Geometry


def nifti_suffix(filename: str) -> str:
    """The suffix of a scan's file name (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``); anything else raises
    ``NiftiError``."""
    suffix = image_suffix(filename)
    if suffix is None:
        raise NiftiError(f"expected a {', '.join(IMAGE_SUFFIXES)} file, got {filename!r}")
    return suffix


def case_id_from_filename(filename: str) -> str:
    """``case_001_0000.nii.gz`` -> ``case_001``: no channel suffix or extension, unsafe characters as ``_``."""
    stem = _NIFTI_END.sub("", Path(filename.replace("\\", "/")).name)
    case_id = _UNSAFE.sub("_", stem).strip("_")[:200]
    if not case_id:
        raise IngestError(f"expected a file name to derive a case id from, got {filename!r} (send case_id)")
    return case_id


def check_identifier(value: str, what: str) -> str:
    """A case or patient id: 1 to 200 characters of ``A-Z a-z 0-9 _ . -``."""
    if not _IDENTIFIER.fullmatch(value):
        raise IngestError(f"expected a {what} of 1 to 200 characters A-Z a-z 0-9 _ . -, got {value!r}")
    return value


def check_split(value: str) -> str:
    if value not in SPLITS:
        raise IngestError(f"expected a split in {SPLITS}, got {value!r}")
    return value


def staged_case(image: tuple[Path, str], label: tuple[Path, str] | None, fields: dict[str, str]) -> StagedCase:
    """A case from uploaded (staging path, client file name) pairs and the optional form fields ``case_id``,
    ``patient_id`` and ``split``."""
    case_id = check_identifier(fields.get("case_id") or case_id_from_filename(image[1]), "case id")
    patient_id = check_identifier(fields.get("patient_id") or patient_of(case_id), "patient id")
    split = check_split(fields.get("split") or "train")
    return StagedCase(
        case_id=case_id,
        patient_id=patient_id,
        split=split,
        image=image[0],
        label=label[0] if label else None,
        image_name=image[1],
        label_name=label[1] if label else "",
    )


def check_case(case: StagedCase, num_classes: int, max_voxels: int) -> CheckedCase:
    """Validate a staged case fully (see the module docstring); raise ``NiftiError`` naming the bad file."""
    with client_named(case.image, case.image_name, f"image of case {case.case_id!r}"):
        image = read_image(case.image, max_voxels=max_voxels)
    if case.label is not None:
        with client_named(case.label, case.label_name, f"label of case {case.case_id!r}"):
            read_label(case.label, image.geometry, num_classes=num_classes, max_voxels=max_voxels)
    return CheckedCase(staged=case, geometry=image.geometry)


def client_message(message: str, names: Mapping[Path, str]) -> str:
    """``message`` with each staging path (or its bare name) replaced by the client's file name."""
    for path, shown in names.items():
        for staged in (str(path.resolve()), str(path), path.name):
            message = message.replace(staged, shown or "the upload")
    return message


@contextmanager
def client_named(path: Path, shown: str, what: str) -> Iterator[None]:
    """Re-raise a ``NiftiError`` with the client's file name instead of the staging path or name, and which file
    it was; staging paths never reach the client."""
    try:
        yield
    except NiftiError as exc:
        raise type(exc)(f"{client_message(str(exc), {path: shown})} ({what})") from exc


def store_cases(session: Session, store: ArtifactStore, dataset_id: str, cases: Sequence[CheckedCase]) -> list[Case]:
    """Move checked cases into the store and commit their rows, all or none."""
    _check_new(session, dataset_id, [case.staged.case_id for case in cases])
    keys: list[str] = []
    try:
        rows = [_store_one(store, dataset_id, case, keys) for case in cases]
        session.add_all(rows)
        session.commit()
    except IntegrityError as exc:
        _undo(session, store, keys)
        raise DuplicateCaseError(f"expected case ids new to dataset {dataset_id}, got a conflicting write") from exc
    except BaseException:
        _undo(session, store, keys)
        raise
    logger.info("stored %d case(s) in dataset %s", len(rows), dataset_id)
    return rows


def _check_new(session: Session, dataset_id: str, case_ids: list[str]) -> None:
    if len(set(case_ids)) != len(case_ids):
        raise IngestError(f"expected unique case ids, got {len(case_ids) - len(set(case_ids))} repeated")
    present: set[str] = set()
    for start in range(0, len(case_ids), 500):
        batch = case_ids[start : start + 500]
        query = select(Case.case_id).where(Case.dataset_id == dataset_id, Case.case_id.in_(batch))
        present.update(session.scalars(query))
    if present:
        raise DuplicateCaseError(
            f"expected case ids new to dataset {dataset_id}, got {len(present)} already there: {sorted(present)[:5]}"
        )


def _store_one(store: ArtifactStore, dataset_id: str, case: CheckedCase, keys: list[str]) -> Case:
    staged = case.staged
    image = store.put(staged.image, nifti_suffix(staged.image.name))
    keys.append(image.key)
    label = store.put(staged.label, nifti_suffix(staged.label.name)) if staged.label is not None else None
    if label is not None:
        keys.append(label.key)
    return Case(
        dataset_id=dataset_id,
        case_id=staged.case_id,
        patient_id=staged.patient_id,
        split=staged.split,
        role="labelled" if label is not None else "unlabelled",
        image_key=image.key,
        image_sha256=image.sha256,
        label_key=label.key if label is not None else None,
        label_sha256=label.sha256 if label is not None else None,
        geometry=case.geometry.to_dict(),
    )


def _undo(session: Session, store: ArtifactStore, keys: list[str]) -> None:
    """Roll back, then remove the objects put by this request that no committed row references."""
    session.rollback()
    for key in set(keys):
        cases = select(func.count()).select_from(Case).where(or_(Case.image_key == key, Case.label_key == key))
        masks = select(func.count()).select_from(Segmentation).where(Segmentation.mask_key == key)
        if not session.scalar(cases) and not session.scalar(masks):
            store.path(key).unlink(missing_ok=True)
    session.rollback()  # end the read-only transaction of the reference checks


def cases_from_nnunet(folder: Path, dataset: Dataset) -> list[StagedCase]:
    """The cases of an unpacked nnU-Net raw folder, with their splits.

    ``dataset.json`` (optional) must name the dataset's classes; without it one is written from them.
    ``splits.json`` (optional) may use train / val / test (or nnU-Net's folds: fold 0); cases it does not list,
    and every case when it is absent, go to ``train``.
    """
    classes = [str(name) for name in dataset.classes]
    if not (folder / "imagesTr").is_dir():
        raise IngestError("expected an imagesTr/ folder in the archive, got none")
    meta = folder / "dataset.json"
    if not meta.is_file():
        meta.write_text(json.dumps({"labels": {name: value for value, name in enumerate(classes)}}), encoding="utf-8")
    has_splits = (folder / "splits.json").is_file()
    index = load_nnunet_raw(folder, preset=dataset.preset)
    if list(index.classes) != classes:
        raise IngestError(f"expected dataset.json labels {classes}, got {list(index.classes)}")
    split_of = _split_of(index.splits) if has_splits else {}
    training = [
        StagedCase(
            case_id=check_identifier(record.case_id, "case id"),
            patient_id=check_identifier(record.patient_id, "patient id"),
            split=split_of.get(record.case_id, "train"),
            image=record.image,
            label=record.label,
            image_name=f"imagesTr/{record.image.name}",
            label_name=f"labelsTr/{record.label.name}" if record.label else "",
        )
        for record in index.cases
    ]
    return training + _test_cases(folder / "imagesTs")


def _test_cases(folder: Path) -> list[StagedCase]:
    """nnU-Net's ``imagesTs/<case>_0000.nii.gz``: unlabelled scans in split ``test`` (kept out of training; there
    to be segmented, e.g. by a batch segmentation of the split)."""
    if not folder.is_dir():
        return []
    cases = []
    for path in sorted(folder.iterdir()):
        suffix = nifti_suffix(path.name)
        stem = path.name[: -len(suffix)]
        if not stem.endswith(CHANNEL_SUFFIX) or len(stem) == len(CHANNEL_SUFFIX):
            raise IngestError(f"expected imagesTs/<case>{CHANNEL_SUFFIX}{suffix} names, got imagesTs/{path.name}")
        case_id = check_identifier(stem[: -len(CHANNEL_SUFFIX)], "case id")
        cases.append(
            StagedCase(
                case_id=case_id,
                patient_id=check_identifier(patient_of(case_id), "patient id"),
                split="test",
                image=path,
                label=None,
                image_name=f"imagesTs/{path.name}",
            )
        )
    return cases


def _split_of(splits: dict[str, tuple[str, ...]]) -> dict[str, str]:
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise IngestError(f"expected splits.json to use splits {SPLITS}, got {unknown}")
    split_of: dict[str, str] = {}
    for name, case_ids in splits.items():
        for case_id in case_ids:
            if split_of.setdefault(case_id, name) != name:
                raise IngestError(f"expected each case in one split, got {case_id!r} in {split_of[case_id]} and {name}")
    return split_of
