"""The web console in a real headless browser (Debian's chromium + chromedriver, installed by ``.ci/run``) against a
real API and worker: sign in, see the datasets, watch a job finish live, open its model, upload a scan with its label
and see the overlay and the scores. Screenshots go to ``$MONA_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mona_client import Client
from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case, write_phantom_dataset
from tests.services.conftest import API_KEY, REPO
from tests.services.test_end_to_end import SHAPE, TINY

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as expected  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver not installed")
ARTIFACTS = Path(os.environ.get("MONA_TEST_ARTIFACTS", REPO / "test-artifacts")) / "console"


@pytest.fixture()
def browser() -> Iterator[object]:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))  # type: ignore[attr-defined]


def test_sign_in_watch_a_job_and_segment(
    live_api_url: str, browser: object, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    driver: object = browser
    wait = WebDriverWait(driver, 240)
    data = write_phantom_dataset(tmp_path / "phantoms", n_patients=4, frames=1, seed=0, val_patients=1, shape=SHAPE)
    with Client(live_api_url, API_KEY) as mona:
        dataset = mona.create_dataset("console phantoms", list(PHANTOM_CLASSES))
        for image in sorted((data / "imagesTr").glob("*.nii.gz")):
            case_id = image.name.removesuffix("_0000.nii.gz")
            split = "val" if case_id.startswith("patient004") else "train"
            mona.upload_case(dataset["id"], image, data / "labelsTr" / f"{case_id}.nii.gz", split=split)

    driver.get(f"{live_api_url}/ui/")  # type: ignore[attr-defined]
    assert "/ui/login" in driver.current_url, "without a key the console asks for one"  # type: ignore[attr-defined]
    key_field = driver.find_element(By.ID, "api_key")  # type: ignore[attr-defined]
    key_field.send_keys("not-a-key")
    driver.find_element(By.ID, "sign-in").click()  # type: ignore[attr-defined]
    refused = wait.until(expected.presence_of_element_located((By.CLASS_NAME, "error")))
    assert "expected a valid API key" in refused.text
    wait.until(expected.presence_of_element_located((By.ID, "api_key"))).send_keys(API_KEY)
    driver.find_element(By.ID, "sign-in").click()  # type: ignore[attr-defined]
    wait.until(expected.presence_of_element_located((By.ID, "datasets")))
    assert "console phantoms" in driver.find_element(By.ID, "datasets").text  # type: ignore[attr-defined]
    timing = driver.execute_script(  # type: ignore[attr-defined]
        "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;"
    )
    record_property("console: index page load (ms)", round(float(timing), 1))
    _shot(driver, "1-index")

    with Client(live_api_url, API_KEY) as mona:
        job = mona.create_job(
            "supervised", dataset["id"], {**TINY, "iterations": 30}, labelled_patients=2, device="cpu"
        )
    driver.get(f"{live_api_url}/ui/jobs/{job['id']}")  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "job-status").text == "succeeded")
    assert driver.find_element(By.ID, "job-iteration").text == "30 / 30"  # type: ignore[attr-defined]
    curve_width = "const i = document.getElementById('loss-curve'); return i ? i.naturalWidth : 0"
    wait.until(lambda d: (d.execute_script(curve_width) or 0) > 0)
    _shot(driver, "2-job")

    driver.find_element(By.ID, "job-model").click()  # type: ignore[attr-defined]
    wait.until(expected.presence_of_element_located((By.ID, "segment-form")))
    scan, label = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
    write_phantom_case(scan, label, seed=321, shape=SHAPE)
    driver.find_element(By.ID, "image").send_keys(str(scan))  # type: ignore[attr-defined]
    driver.find_element(By.ID, "label").send_keys(str(label))  # type: ignore[attr-defined]
    started = time.monotonic()
    driver.find_element(By.ID, "segment").click()  # type: ignore[attr-defined]
    overlay_width = "const i = document.getElementById('overlay'); return i ? i.naturalWidth : 0"
    wait.until(lambda d: (d.execute_script(overlay_width) or 0) > 0)
    record_property("console: upload + segment + overlay shown (s)", round(time.monotonic() - started, 2))
    scores = driver.find_element(By.ID, "scores").text  # type: ignore[attr-defined]
    assert all(name in scores for name in ("RV", "Myo", "LV"))
    _shot(driver, "3-segmentation")

    slice_width = "const i = document.getElementById('slice-image'); return i && i.complete ? i.naturalWidth : 0"
    wait.until(lambda d: (d.execute_script(slice_width) or 0) > 0)
    first = driver.execute_script("return document.getElementById('slice-image').src")  # type: ignore[attr-defined]
    driver.execute_script(  # type: ignore[attr-defined]
        "const s = document.getElementById('slice'); s.value = 2; s.dispatchEvent(new Event('input'));"
    )
    wait.until(lambda d: d.execute_script("return document.getElementById('slice-image').src") != first)
    wait.until(lambda d: (d.execute_script(slice_width) or 0) > 0)
    assert driver.find_element(By.ID, "slice-number").text == "2"  # type: ignore[attr-defined]
    assert driver.execute_script("return document.getElementById('slice-image').src").endswith("/2.png")  # type: ignore[attr-defined]
    _shot(driver, "4-slice-viewer")
