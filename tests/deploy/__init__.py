"""Static checks of the deployment files (compose, Dockerfiles, Kubernetes) against the real CLI and Settings.

The helpers here are shared by the three test modules: they tie a container's command to ``mona``'s argument parser
and an environment variable name to a ``Settings`` field alias, so a renamed flag or variable fails a test.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

import pytest

from mona_core.cli import build_parser
from services.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINER_COMMANDS = {"api", "worker", "db"}
"""``mona`` subcommands a container may run; ``serve`` (embedded SQLite + local broker) is for one machine only."""


def settings_aliases() -> set[str]:
    """The environment variable names ``Settings`` reads: each field's alias."""
    return {field.alias for field in Settings.model_fields.values() if field.alias}


def parse_mona_command(command: str | Sequence[str]) -> argparse.Namespace:
    """Parse a container command (``mona ...``, a string or an argv list) with the real ``mona`` parser."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    assert argv and argv[0] == "mona", f"expected a command starting with 'mona', got {argv}"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is rejected by the mona argument parser")
    assert args.command in CONTAINER_COMMANDS, f"expected one of {sorted(CONTAINER_COMMANDS)}, got {args.command!r}"
    return args
