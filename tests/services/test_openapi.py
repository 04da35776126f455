"""OpenAPI is the contract: the document equals the committed ``docs/openapi.json`` (regenerate it deliberately with
``python -m services.api.openapi > docs/openapi.json``), every route declares the errors it can answer, and media
types and enums are what the routes really send and take."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from mona_core.training.config import METHODS
from services.api.main import create_app
from services.api.schemas.jobs import JobKind
from services.common.settings import Settings

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
METHODS_HTTP = ("get", "post", "put", "patch", "delete")


def _schema(settings: Settings) -> dict[str, Any]:
    schema: dict[str, Any] = create_app(settings).openapi()
    return schema


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS_HTTP
    ]


def test_the_schema_is_the_committed_contract(service_settings: Settings) -> None:
    current = json.loads(json.dumps(_schema(service_settings), sort_keys=True))
    committed = json.loads(COMMITTED.read_text())
    changed = sorted(
        set(current["paths"]) ^ set(committed["paths"])
        | {
            path
            for path in set(current["paths"]) & set(committed["paths"])
            if current["paths"][path] != committed["paths"][path]
        }
    )
    assert current == committed, (
        f"the API changed ({changed[:8]} ...); if deliberate: python -m services.api.openapi > docs/openapi.json"
    )


def test_every_route_declares_its_errors_as_json(service_settings: Settings) -> None:
    schema = _schema(service_settings)
    for path, method, operation in _operations(schema):
        if not path.startswith("/v1/"):
            continue
        declared = set(operation["responses"])
        assert {"401", "403", "503"} <= declared, f"{method.upper()} {path}: {sorted(declared)}"
        if "{" in path:
            assert "404" in declared, f"{method.upper()} {path}"
        for code in declared - {"200", "201", "202", "204", "422"}:
            content = operation["responses"][code]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/ErrorBody"}, f"{method.upper()} {path} {code}"


def test_media_types_enums_and_pages(service_settings: Settings) -> None:
    schema = _schema(service_settings)
    paths = schema["paths"]
    for png in ("/v1/jobs/{job_id}/study.png", "/v1/jobs/{job_id}/loss_curve.png"):
        assert set(paths[png]["get"]["responses"]["200"]["content"]) == {"image/png"}, png
    kinds = schema["components"]["schemas"]["JobCreate"]["properties"]["kind"]["enum"]
    assert kinds == [*METHODS, "study"] == list(typing.get_args(JobKind))
    for listing in ("/v1/datasets", "/v1/jobs", "/v1/models", "/v1/datasets/{dataset_id}/cases"):
        ref = paths[listing]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert {"items", "total", "limit", "offset"} <= set(page["properties"]), listing
        params = {param["name"] for param in paths[listing]["get"]["parameters"]}
        assert {"limit", "offset"} <= params, listing
    for upload in ("/v1/datasets/{dataset_id}/cases", "/v1/datasets/{dataset_id}/archive"):
        form = paths[upload]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert any(prop.get("format") == "binary" for prop in form["properties"].values()), upload


def test_pages_count_everything_and_slice(api: TestClient) -> None:
    project = "paging-" + __import__("uuid").uuid4().hex[:8]
    made = [
        api.post("/v1/datasets", json={"name": f"d{i}", "classes": ["background", "x"], "project": project}).json()[
            "id"
        ]
        for i in range(5)
    ]
    first = api.get("/v1/datasets", params={"project": project, "limit": 2}).json()
    second = api.get("/v1/datasets", params={"project": project, "limit": 2, "offset": 2}).json()
    assert (first["total"], first["limit"], first["offset"], len(first["items"])) == (5, 2, 0, 2)
    assert (second["offset"], len(second["items"])) == (2, 2)
    listed = [row["id"] for row in first["items"] + second["items"]]
    assert listed == made[::-1][:4], "newest first, no overlap between pages"


def test_docs_pages_need_no_cdn(api: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = api.get(page)
        assert html.status_code == 200 and "/openapi.json" in html.text, page
        assert "cdn" not in html.text.lower() and "googleapis" not in html.text, f"{page} must load nothing remote"
        assets = [part.split('"')[0] for part in html.text.split('"/docs-assets/')[1:]]
        assert assets, page
        for asset in assets:
            assert api.get(f"/docs-assets/{asset}").status_code == 200, asset
