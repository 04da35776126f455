"""The ``mona`` command line: train, export, segment, evaluate, demo.

Command names and flags are the interface scripts rely on; keep them stable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version

from mona_core.cli import commands, demo, segmenting, study
from mona_core.data.dataset import DatasetError
from mona_core.io import NiftiError

PLUGIN_GROUP = "mona.commands"
"""Packages add subcommands through this entry-point group (the service adds ``serve``, ``api``, ``worker``,
``db``); each entry point is a function taking the subparsers object. mona_core itself never imports them."""


def _version() -> str:
    try:
        return version("mona-service")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mona", description="MONA: segmentation with extremely few labels.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"mona {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.add_train(sub)
    commands.add_export(sub)
    segmenting.add_segment(sub)
    commands.add_evaluate(sub)
    demo.add_demo(sub)
    study.add_study(sub)
    for plugin in entry_points(group=PLUGIN_GROUP):
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except (NiftiError, DatasetError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"mona {args.command}: error: {exc}\n")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
