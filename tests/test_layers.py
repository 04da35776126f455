"""The layering rules of the architecture notes, checked on the real import graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE = [
    "mona_core.io",
    "mona_core.data",
    "mona_core.metrics",
    "mona_core.report",
    "mona_core.export.manifest",
    "mona_core.inference",
    "mona_core.inference.evaluate",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported by {module}'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_mona_core_knows_nothing_of_the_service() -> None:
    offenders = []
    for path in (ROOT / "mona_core").rglob("*.py"):
        text = path.read_text()
        for needle in (
            "import services",
            "from services",
            "os.environ",
            "getenv",
            "sqlalchemy",
            "celery",
            "fastapi",
        ):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offenders == []
