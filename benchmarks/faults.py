"""The service under faults, as figures: jobs lost, 5xx answers, seconds from fault to recovery, disk left behind.

Runs the fault-injection tests (real Postgres and Redis: stopped, hung with SIGSTOP, restarted; workers and
``mona serve`` killed) and prints what they measured (their ``record_property`` figures) as one table: the
worst value over repeats and parametrised cases, and the sum for counts. Needs the test servers, so run it as

    .ci/with-services .venv/bin/python benchmarks/faults.py          (or: make faults)

Each figure is measured on the machine it runs on; the tests themselves assert the goals (0 lost, 0 5xx, ...).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULT_TESTS = (
    "tests/services/test_outages.py",
    "tests/services/test_lost_messages.py",
    "tests/services/test_recovery.py",
    "tests/services/test_embedded_supervision.py",
    "tests/services/test_divergence_job.py",
    "tests/services/test_job_bounds.py",
    "tests/services/test_storage_lifecycle.py",
)
COUNTS = ("lost", "5xx", "bytes", "published")
"""Figures whose words say they are counts: summed over cases (the others: worst case, i.e. the largest)."""


def run_tests(junit: Path, tests: tuple[str, ...]) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def figures(junit: Path) -> tuple[dict[str, list[float]], int, int]:
    """Every recorded property by name, and the numbers of tests run and failed."""
    values: dict[str, list[float]] = defaultdict(list)
    root = ET.parse(junit).getroot()
    cases = list(root.iter("testcase"))
    failed = sum(1 for case in cases if case.find("failure") is not None or case.find("error") is not None)
    for case in cases:
        for prop in case.iter("property"):
            values[prop.get("name", "?")].append(float(prop.get("value", "nan")))
    return values, len(cases), failed


def table(values: dict[str, list[float]]) -> str:
    lines = ["| figure | value | cases |", "|---|---|---|"]
    for name in sorted(values):
        numbers = values[name]
        is_count = any(word in name for word in COUNTS)
        value = sum(numbers) if is_count else max(numbers)
        shown = f"{value:.0f}" if is_count else f"{value:.2f} (worst)"
        lines.append(f"| {name} | {shown} | {len(numbers)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="*", default=list(FAULT_TESTS), help="test files (default: the fault tests)")
    args = parser.parse_args()
    if not (os.environ.get("MONA_TEST_DATABASE_URL") and os.environ.get("MONA_TEST_BROKER_URL")):
        hint = "run: .ci/with-services .venv/bin/python benchmarks/faults.py (or: make faults)"
        print(f"expected the test servers' URLs in the environment; {hint}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        junit = Path(folder) / "faults.xml"
        code = run_tests(junit, tuple(args.tests))
        values, ran, failed = figures(junit)
    print(f"\n{ran} fault tests, {failed} failed (real Postgres 15 + Redis on loopback, this machine)\n")
    print(table(values))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
