"""Clinical formats over REST: MHA and NRRD scans, a zip of a DICOM series (mask on the series' grid, or a DICOM SEG
with ``?format=dicom-seg``), MHA/NRRD cases and archives; unsafe or wrong zips refused with a 422."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from fastapi.testclient import TestClient

from mona_core.data.phantoms import make_phantom
from mona_core.io import read_dicom_series, read_label, write_dicom_series, write_volume
from tests.services.test_datasets_api import create_dataset
from tests.services.test_models_api import Registered, exported, model, scans

__all__ = ["exported", "model", "scans"]  # fixtures used here


def _zip_folder(folder: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, arcname=f"{prefix}{path.name}")
    return buffer.getvalue()


def _series(tmp_path: Path) -> Path:
    image, _ = make_phantom(5, shape=(4, 40, 48), spacing=(1.25, 1.5, 7.0), oblique=True)
    folder = tmp_path / "series"
    write_dicom_series(image, folder, series_description="cine SAX")
    return folder


def test_mha_and_nrrd_scans_are_segmented_on_their_grid(
    api: TestClient, model: Registered, scans: tuple[Path, Path], tmp_path: Path
) -> None:
    volume = read_label(scans[1])  # any volume on the phantom's oblique grid
    for suffix in (".mha", ".nrrd"):
        scan = write_volume(volume, tmp_path / f"scan{suffix}")
        files = {"image": (scan.name, scan.read_bytes(), "application/octet-stream")}
        response = api.post(f"/v1/models/{model.model_id}/segment", files=files)
        assert response.status_code == 200, response.text
        (tmp_path / "mask.nii.gz").write_bytes(response.content)
        assert read_label(tmp_path / "mask.nii.gz").geometry.matches(volume.geometry, tolerance=1e-6), suffix


def test_a_zipped_dicom_series_gives_a_mask_or_a_dicom_seg(api: TestClient, model: Registered, tmp_path: Path) -> None:
    folder = _series(tmp_path)
    source = read_dicom_series(folder)
    path = f"/v1/models/{model.model_id}/segment"
    for prefix in ("", "SE0001/"):
        files = {"image": ("study.zip", _zip_folder(folder, prefix), "application/zip")}
        response = api.post(path, files=files)
        assert response.status_code == 200, response.text
        (tmp_path / "mask.nii.gz").write_bytes(response.content)
        mask = read_label(tmp_path / "mask.nii.gz")
        # NIfTI keeps origin and direction as float32: ~2e-6 mm from DICOM's decimal strings on this grid.
        assert mask.geometry.matches(source.volume.geometry, tolerance=1e-4), prefix
        assert mask.geometry.size == source.volume.geometry.size

    files = {"image": ("study.zip", _zip_folder(folder), "application/zip")}
    answer = api.post(path, files=files, params={"format": "dicom-seg"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom" and answer.headers["x-segmentation-id"]
    seg = pydicom.dcmread(io.BytesIO(answer.content))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(file).SOPInstanceUID for file in source.files}
    labels = [segment.SegmentLabel for segment in seg.SegmentSequence]
    assert set(labels) <= {"RV", "Myo", "LV"}
    saved = api.get(f"/v1/segmentations/{answer.headers['x-segmentation-id']}/mask")
    (tmp_path / "saved.nii.gz").write_bytes(saved.content)
    frames = np.asarray(seg.pixel_array).reshape(-1, *source.volume.array.shape[1:])
    assert frames.sum() == sum(
        int((read_label(tmp_path / "saved.nii.gz").array == value).sum()) for value in range(1, len(labels) + 1)
    ), "the SEG's frames hold the same voxels as the stored mask"
    assert not list((Path(api.app.state.store.root) / "tmp").iterdir()), "nothing left in staging"  # type: ignore[attr-defined]


def test_bad_series_zips_and_formats_are_422(
    api: TestClient, model: Registered, scans: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = _series(tmp_path)
    path = f"/v1/models/{model.model_id}/segment"
    nested = {"image": ("study.zip", _zip_folder(folder, "a/b/"), "application/zip")}
    assert api.post(path, files=nested).status_code == 422
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.dcm", b"x")
    refused = api.post(path, files={"image": ("evil.zip", evil.getvalue(), "application/zip")})
    assert refused.status_code == 422 and "'..'" in refused.text
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("notes.txt", b"no images here")
    assert api.post(path, files={"image": ("notes.zip", empty.getvalue(), "application/zip")}).status_code == 422
    nifti = {"image": (scans[0].name, scans[0].read_bytes(), "application/gzip")}
    wrong = api.post(path, files=nifti, params={"format": "dicom-seg"})
    assert wrong.status_code == 422 and "DICOM series" in wrong.text
    other = {"image": ("scan.png", b"\x89PNG", "image/png")}
    assert api.post(path, files=other).status_code == 422


def test_mha_and_nrrd_cases_and_archives_are_accepted(api: TestClient, tmp_path: Path) -> None:
    image, label = make_phantom(7, shape=(2, 16, 16))
    dataset = create_dataset(api)
    scan, truth = write_volume(image, tmp_path / "c1_0000.mha"), write_volume(label, tmp_path / "c1.nrrd")
    files = {"image": (scan.name, scan.read_bytes()), "label": (truth.name, truth.read_bytes())}
    case = api.post(f"/v1/datasets/{dataset}/cases", files=files)
    assert case.status_code == 201, case.text
    assert case.json()["case_id"] == "c1" and case.json()["role"] == "labelled"

    members = io.BytesIO()
    with zipfile.ZipFile(members, "w") as archive:
        archive.write(scan, "imagesTr/c2_0000.mha")
        archive.write(truth, "labelsTr/c2.nrrd")
        archive.write(scan, "imagesTs/c3_0000.mha")
    added = api.post(f"/v1/datasets/{create_dataset(api)}/archive", files={"archive": ("d.zip", members.getvalue())})
    assert added.status_code == 201, added.text
    roles = {item["case_id"]: (item["role"], item["split"]) for item in added.json()["cases"]}
    assert roles == {"c2": ("labelled", "train"), "c3": ("unlabelled", "test")}
