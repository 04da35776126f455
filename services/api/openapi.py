"""The OpenAPI document as the API's contract.

``declare_errors`` gives every ``/v1`` operation the error answers it can give: 401/403/503 for all (the key check
and the outage handlers), 404 when the path names a resource, besides what a route declares itself (409, 413, 400)
and FastAPI's own 422. ``python -m services.api.openapi > docs/openapi.json`` writes the
committed copy that ``tests/services/test_openapi.py`` compares with, so that a change of the contract is deliberate.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from services.api.schemas.common import ErrorBody, error_responses

ALWAYS = (401, 403, 503)


def error_codes(path: str) -> list[int]:
    """The error statuses a ``/v1`` operation can answer, by its path: every one needs a key and the database
    (401, 403, 503); one that names a resource may not find it (404)."""
    return [*ALWAYS, *([404] if "{" in path else [])]


def declare_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare, on every ``/v1`` operation, the errors its path implies (JSON ``ErrorBody``),
    besides what the route declares itself."""
    generate = app.openapi

    def with_errors() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "ErrorBody", ErrorBody.model_json_schema()
        )
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path, item in schema["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for operation in item.values():
                for code, spec in error_responses(*error_codes(path)).items():
                    operation["responses"].setdefault(str(code), {"description": spec["description"], "content": body})
        app.openapi_schema = schema
        return schema

    app.openapi = with_errors  # type: ignore[method-assign]


def main() -> int:
    from services.api.main import create_app
    from services.common.settings import Settings

    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Settings(MONA_DATA_DIR=Path(folder)))  # type: ignore[call-arg]
        json.dump(app.openapi(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
