"""Dataset archives: safe unpacking (``services.common.archives``) and ``POST /v1/datasets/{id}/archive``.

Every refused archive must leave no row and no file behind; tables may be shared (Postgres in CI), so only this
test's dataset is looked at.
"""

from __future__ import annotations

import io
import json
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mona_core.data.phantoms import write_phantom_dataset
from mona_core.io import Volume, read_image, write_volume
from services.api.main import create_app
from services.common.archives import ArchiveError, ArchiveLimits, _Unpacker, archive_suffix, extract_archive
from services.common.settings import Settings
from tests.services.conftest import API_KEY
from tests.services.test_datasets_api import SHAPE, create_dataset, snapshot

LIMITS = ArchiveLimits(max_total_bytes=1 << 20, max_member_bytes=1 << 19)
NII = b"\x5c\x01" + bytes(400)  # a few bytes standing in for a NIfTI file (the unpacker never reads them)

Members = list[tuple[str, bytes]]


def phantom_folder(tmp_path: Path, **kwargs: int) -> Path:
    options = {"n_patients": 3, "frames": 1, "unlabelled_patients": 1, "val_patients": 1, **kwargs}
    return write_phantom_dataset(tmp_path / "Dataset001_Phantom", shape=SHAPE, **options)


def folder_members(folder: Path, prefix: str = "") -> Members:
    return [(prefix + str(p.relative_to(folder)), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def make_tar(members: Members, links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A .tar.gz of ``members``; ``links`` maps a name to (type, target) for link / device members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            bundle.addfile(info)
    return buffer.getvalue()


def make_zip(members: Members, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members:
            bundle.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def lying_zip(name: str, real_size: int, declared: int) -> bytes:
    """A zip whose member inflates to ``real_size`` bytes while both of its headers declare ``declared``."""
    data = bytearray(make_zip([(name, bytes(real_size))]))
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 22 : local + 26] = declared.to_bytes(4, "little")
    data[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(data)


def extract(tmp_path: Path, name: str, data: bytes, limits: ArchiveLimits = LIMITS) -> Path:
    archive = tmp_path / name
    archive.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    extract_archive(archive, dest, limits)
    return dest


# --- unpacking -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unpacks_the_layout_strips_one_top_folder_and_skips_mac_extras(tmp_path: Path, kind: str) -> None:
    members = [
        ("Dataset001/imagesTr/a_0000.nii.gz", NII),
        ("Dataset001/labelsTr/a.nii.gz", NII),
        ("Dataset001/dataset.json", b"{}"),
        ("Dataset001/.DS_Store", b"x"),
        ("__MACOSX/Dataset001/._dataset.json", b"x"),
    ]
    data = make_zip(members) if kind == "zip" else make_tar(members)
    dest = extract(tmp_path, f"a.{kind}", data)
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["dataset.json", "imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz"]


BAD_MEMBERS: dict[str, tuple[Members, str]] = {
    "traversal": ([("../evil.nii.gz", NII)], "'..'"),
    "nested traversal": ([("imagesTr/../../evil.nii.gz", NII)], "'..'"),
    "absolute": ([("/tmp/imagesTr/a_0000.nii.gz", NII)], "relative"),
    "backslash": ([("imagesTr\\a_0000.nii.gz", NII)], "relative"),
    "unknown file": ([("imagesTr/a_0000.nii.gz", NII), ("notes/readme.txt", b"hi")], "expected only"),
    "nested image": ([("imagesTr/sub/a_0000.nii.gz", NII)], "expected only"),
    "two top folders": ([("A/imagesTr/a_0000.nii.gz", NII), ("B/imagesTr/b_0000.nii.gz", NII)], "one top folder"),
    "repeated": ([("imagesTr/a_0000.nii.gz", NII), ("./imagesTr/a_0000.nii.gz", NII)], "twice"),
    "too big": ([("imagesTr/a_0000.nii.gz", bytes(LIMITS.max_member_bytes + 1))], "at most"),
    "total too big": ([(f"imagesTr/{i}_0000.nii.gz", bytes(300_000)) for i in range(4)], "unpacked"),
    "too many": ([(f"imagesTr/{i}_0000.nii.gz", NII) for i in range(12)], "members"),
}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_refuses_unsafe_members(tmp_path: Path, kind: str, case: str) -> None:
    members, words = BAD_MEMBERS[case]
    data = make_zip(members) if kind == "zip" else make_tar(members)
    limits = ArchiveLimits(LIMITS.max_total_bytes, LIMITS.max_member_bytes, max_members=10)
    with pytest.raises(ArchiveError, match="expected") as error:
        extract(tmp_path, f"a.{kind}", data, limits)
    assert words in str(error.value)
    assert not (tmp_path / "evil.nii.gz").exists() and not (tmp_path.parent / "evil.nii.gz").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_refuses_tar_links_and_devices(tmp_path: Path, kind: bytes) -> None:
    data = make_tar([("imagesTr/a_0000.nii.gz", NII)], links={"imagesTr/b_0000.nii.gz": (kind, "/etc/passwd")})
    with pytest.raises(ArchiveError, match="link or special file"):
        extract(tmp_path, "a.tar.gz", data)


def test_refuses_zip_symlinks(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="link or special file"):
        extract(tmp_path, "a.zip", make_zip([], symlink="imagesTr/a_0000.nii.gz"))


def test_refuses_zip_members_that_inflate_past_their_declared_size(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="expected"):
        extract(tmp_path, "a.zip", lying_zip("imagesTr/a_0000.nii.gz", 4 << 20, 1000))
    assert sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file()) <= 1000


def test_counts_the_bytes_actually_unpacked(tmp_path: Path) -> None:
    unpacker = _Unpacker(dest=tmp_path, limits=LIMITS)
    with pytest.raises(ArchiveError, match="to unpack to 1000 bytes, got more"):
        unpacker.write(io.BytesIO(bytes(5000)), "imagesTr/a_0000.nii.gz", declared=1000)


def test_refuses_huge_tar_metadata_headers_before_reading_them(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as bundle:
        info = tarfile.TarInfo("imagesTr/a_0000.nii.gz")
        info.size, info.pax_headers = len(NII), {"comment": "x" * 200_000}
        bundle.addfile(info, io.BytesIO(NII))
    with pytest.raises(ArchiveError, match="metadata"):
        extract(tmp_path, "a.tar.gz", buffer.getvalue())


def test_archive_suffix() -> None:
    assert [archive_suffix(n) for n in ("a.ZIP", "a.tar.gz", "a.tgz")] == [".zip", ".tar.gz", ".tar.gz"]
    with pytest.raises(ArchiveError, match=r"expected a \.zip"):
        archive_suffix("a.rar")


# --- over HTTP -------------------------------------------------------------------------------------------------


def post_archive(api: TestClient, dataset_id: str, name: str, data: bytes) -> dict[str, object]:
    response = api.post(f"/v1/datasets/{dataset_id}/archive", files={"archive": (name, data)})
    return {"status": response.status_code, **response.json()}


def test_phantom_dataset_tar_gz_keeps_its_splits(api: TestClient, service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    folder = phantom_folder(tmp_path)
    result = post_archive(api, dataset_id, "phantom.tar.gz", make_tar(folder_members(folder, "Dataset001_Phantom/")))
    assert result["status"] == 201, result
    assert result["dataset_id"] == dataset_id and result["cases_added"] == 3
    cases = {case["case_id"]: case for case in result["cases"]}  # type: ignore[attr-defined]
    splits = json.loads((folder / "splits.json").read_text())
    assert {case_id: case["split"] for case_id, case in cases.items()} == {
        case_id: split for split, ids in splits.items() for case_id in ids
    }
    assert cases["patient003_frame01"]["role"] == "unlabelled" and cases["patient001_frame01"]["role"] == "labelled"
    image = folder / "imagesTr" / "patient001_frame01_0000.nii.gz"
    assert cases["patient001_frame01"]["geometry"] == read_image(image).geometry.to_dict()
    summary = api.get(f"/v1/datasets/{dataset_id}").json()
    assert (summary["n_cases"], summary["n_patients"], summary["n_labelled_cases"]) == (3, 3, 2)
    assert summary["splits"] == {"train": 2, "val": 1}
    rows, objects, staging = snapshot(service_settings, dataset_id)
    assert rows == 3 and len(objects) >= 5 and staging == []


def test_zip_without_metadata_goes_to_train_and_nnunet_folds_use_fold_0(api: TestClient, tmp_path: Path) -> None:
    folder = phantom_folder(tmp_path, unlabelled_patients=0)
    (folder / "dataset.json").unlink()
    (folder / "splits.json").unlink()
    plain = create_dataset(api)
    result = post_archive(api, plain, "phantom.zip", make_zip(folder_members(folder)))
    assert result["status"] == 201, result
    assert {case["split"] for case in result["cases"]} == {"train"}  # type: ignore[attr-defined]

    folds = [{"train": ["patient001_frame01"], "val": ["patient002_frame01"]}, {"train": [], "val": []}]
    (folder / "splits.json").write_text(json.dumps(folds))
    with_folds = create_dataset(api)
    result = post_archive(api, with_folds, "phantom.zip", make_zip(folder_members(folder)))
    assert result["status"] == 201, result
    splits = {case["case_id"]: case["split"] for case in result["cases"]}  # type: ignore[attr-defined]
    assert splits == {"patient001_frame01": "train", "patient002_frame01": "val", "patient003_frame01": "train"}


def test_images_ts_become_unlabelled_test_cases(api: TestClient, tmp_path: Path) -> None:
    folder = phantom_folder(tmp_path)
    (folder / "imagesTs").mkdir()
    scan = folder / "imagesTs" / "patient009_frame01_0000.nii.gz"
    shutil.copy(folder / "imagesTr" / "patient001_frame01_0000.nii.gz", scan)
    dataset_id = create_dataset(api)
    result = post_archive(api, dataset_id, "phantom.zip", make_zip(folder_members(folder)))
    assert result["status"] == 201, result
    cases = {case["case_id"]: case for case in result["cases"]}  # type: ignore[attr-defined]
    test = cases["patient009_frame01"]
    assert (test["split"], test["role"], test["label_sha256"]) == ("test", "unlabelled", None)
    assert test["patient_id"] == "patient009"
    assert api.get(f"/v1/datasets/{dataset_id}").json()["splits"]["test"] == 1

    scan.rename(folder / "imagesTs" / "loose.nii.gz")
    refused = post_archive(api, create_dataset(api), "phantom.zip", make_zip(folder_members(folder)))
    assert refused["status"] == 422 and "imagesTs/<case>_0000" in str(refused["detail"]), refused


def _with_bad_label(tmp_path: Path) -> Members:
    folder = phantom_folder(tmp_path)
    label = folder / "labelsTr" / "patient002_frame01.nii.gz"
    geometry = read_image(label).geometry
    write_volume(Volume(array=np.full(geometry.shape, 9, np.uint8), geometry=geometry), label)
    return folder_members(folder)


def _with_other_classes(tmp_path: Path) -> Members:
    folder = phantom_folder(tmp_path)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    return folder_members(folder)


def _with_unknown_split(tmp_path: Path) -> Members:
    folder = phantom_folder(tmp_path)
    (folder / "splits.json").write_text(json.dumps({"train": ["patient001_frame01"], "val": [], "extra": []}))
    return folder_members(folder)


BAD_ARCHIVES: dict[str, tuple[str, Callable[[Path], bytes], str]] = {
    "traversal": ("a.tar.gz", lambda t: make_tar([("../evil.nii.gz", NII)]), "'..'"),
    "absolute": ("a.zip", lambda t: make_zip([("/imagesTr/a_0000.nii.gz", NII)]), "relative"),
    "symlink": (
        "a.tar.gz",
        lambda t: make_tar([], links={"imagesTr/a_0000.nii.gz": (tarfile.SYMTYPE, "/etc/passwd")}),
        "link",
    ),
    "zip bomb (lying size)": ("a.zip", lambda t: lying_zip("imagesTr/a_0000.nii.gz", 8 << 20, 2000), "expected"),
    "member too big": ("a.zip", lambda t: make_zip([("imagesTr/a_0000.nii.gz", bytes(3 << 20))]), "at most"),
    "zip bomb (total)": (
        "a.zip",
        lambda t: make_zip([(f"imagesTr/{i}_0000.nii.gz", bytes(3 << 19)) for i in range(3)]),
        "unpacked",
    ),
    "bad label in one case": ("a.tar.gz", lambda t: make_tar(_with_bad_label(t)), "0..3"),
    "other classes": ("a.zip", lambda t: make_zip(_with_other_classes(t)), "dataset.json labels"),
    "unknown split": ("a.zip", lambda t: make_zip(_with_unknown_split(t)), "splits"),
    "no imagesTr": ("a.zip", lambda t: make_zip([("dataset.json", b"{}")]), "imagesTr"),
    "not an archive": ("a.zip", lambda t: b"just text", "broken"),
    "wrong name": ("a.rar", lambda t: b"x", ".zip"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archives_are_refused_and_leave_nothing(
    api: TestClient, service_settings: Settings, tmp_path: Path, case: str
) -> None:
    name, build, words = BAD_ARCHIVES[case]
    data = build(tmp_path)
    dataset_id = create_dataset(api)
    before = snapshot(service_settings, dataset_id)
    small = service_settings.model_copy(update={"max_upload_bytes": 2 << 20, "max_archive_bytes": 4 << 20})
    with TestClient(create_app(small), headers={"X-API-Key": API_KEY}) as client:
        result = post_archive(client, dataset_id, name, data)
    assert result["status"] == 422, result
    assert str(result["detail"]).startswith("expected") and words in str(result["detail"]), result
    assert snapshot(service_settings, dataset_id) == before
    assert not (tmp_path / "evil.nii.gz").exists()


def test_archive_with_existing_case_ids_is_409(api: TestClient, service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    data = make_zip(folder_members(phantom_folder(tmp_path)))
    assert post_archive(api, dataset_id, "a.zip", data)["status"] == 201
    before = snapshot(service_settings, dataset_id)
    result = post_archive(api, dataset_id, "a.zip", data)
    assert result["status"] == 409 and "already there" in str(result["detail"])
    assert snapshot(service_settings, dataset_id) == before
