"""Mutation check: put each known MONA mistake back into the code, run the tests that guard it, and say whether they
caught it (KILLED) or not (SURVIVED). Exit status 1 when any mutation survives.

Each mutation is one textual replacement in one source file, applied to a scratch copy of the repository (the working
tree is never touched), so the check is safe to run beside other work:

    .venv/bin/python benchmarks/mutations.py [--only NAME] [--tests PATH ...]

The list is the issue's (the seven mutations the suite once let through, plus a no-op eq. 5) and the fixes made
since (teachers in train mode, GLCon views that do not align, a resume that forgets the method's state).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/training/test_mona_terms.py", "tests/training/test_mona.py", "tests/losses"]

# name: (file, original text, mutated text)
MUTATIONS: dict[str, tuple[str, str, str]] = {
    "neighbour loss detached at its call site": (
        "mona_core/training/methods/mona.py",
        "self._diversity(out.bottleneck[n_l:], teacher_out.bottleneck)",
        "self._diversity(out.bottleneck[n_l:], teacher_out.bottleneck).detach()",
    ),
    "negatives drawn uniformly, not from softmax(G)": (
        "mona_core/losses/contrast.py",
        "draws = torch.multinomial(torch.softmax(relation, dim=0), num",
        "draws = torch.multinomial(torch.isfinite(relation).float(), num",
    ),
    "labelled pixels dropped from the contrast": (
        "mona_core/training/methods/mona.py",
        "self._tailness(out.decoder, out.logits, labels)",
        "self._tailness([d[n_l:] for d in out.decoder], out.logits[n_l:], labels[n_l:])",
    ),
    "equivariance between two different views": (
        "mona_core/training/methods/mona.py",
        'terms["loss_eqv"] = self._consistency(images, out.logits)',
        'terms["loss_eqv"] = self._consistency(torch.cat([batch.images, weak]), out.logits)',
    ),
    "best.pt always the latest": (
        "mona_core/training/trainer.py",
        'if state.best is None or val_dice > state.best["val_dice"]:',
        "if True:",
    ),
    "export preferring last.pt": (
        "mona_core/training/checkpoint.py",
        "for name in (BEST, LAST):",
        "for name in (LAST, BEST):",
    ),
    "no EMA update of the MONA teacher": (
        "mona_core/training/methods/mona.py",
        "        ema_update(self.teacher, self.model, self.config.ema_decay)\n",
        "        pass\n",
    ),
    "L_unsup detached": (
        "mona_core/training/methods/mona.py",
        'total = parts["loss"] + ramp * unsupervised',
        'total = parts["loss"] + ramp * unsupervised.detach()',
    ),
    "eq. 5 a no-op (queries drawn uniformly)": (
        "mona_core/training/methods/mona.py",
        "c.num_queries, self.generator, c.hard_threshold)",
        "c.num_queries, self.generator)",
    ),
    "teachers in train mode": (
        "mona_core/training/methods/base.py",
        "module.train(not is_frozen(module))",
        "module.train()",
    ),
    "GLCon student view with CutMix and deformation": (
        "mona_core/training/methods/mona.py",
        "strong_from_weak(teacher_view, None, self.generator, GLCON_STUDENT_AUGMENT)",
        "strong_from_weak(teacher_view, None, self.generator)",
    ),
    "GLCon global instance term detached": (
        "mona_core/training/methods/mona.py",
        "global_loss = self._instance(student_global, teacher_global, self.global_memory)",
        "global_loss = self._instance(student_global, teacher_global, self.global_memory).detach()",
    ),
    "GLCon local instance term dropped": (
        "mona_core/training/methods/mona.py",
        'total = parts["loss"] + ramp * (global_loss + local_loss)',
        'total = parts["loss"] + ramp * (global_loss + 0.0 * local_loss)',
    ),
    "resume without the method's generator and banks": (
        "mona_core/training/trainer.py",
        '    if "method" in rng:\n',
        "    if False:\n",
    ),
}


def scratch_copy(destination: Path) -> Path:
    """The repository's sources and tests (no virtualenv, caches or outputs) under ``destination``."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*-output", ".*_cache", "*.egg-info")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def run_tests(tree: Path, tests: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "pytest", *tests, "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow"]
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)


def check(tree: Path, name: str, tests: list[str]) -> bool:
    """Apply one mutation in ``tree``, run ``tests``, restore; True when the tests failed (the mutation is killed)."""
    path, original, mutated = MUTATIONS[name]
    source = tree / path
    text = source.read_text()
    if original not in text:
        raise SystemExit(f"expected {original!r} in {path} for mutation {name!r}: the code moved, update the list")
    source.write_text(text.replace(original, mutated, 1))
    try:
        result = run_tests(tree, tests)
    finally:
        source.write_text(text)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    print(f"{'KILLED  ' if result.returncode else 'SURVIVED'} {name}: {failed[0] if failed else ''}", flush=True)
    return result.returncode != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(MUTATIONS), help="one mutation (repeatable)")
    parser.add_argument("--tests", nargs="+", default=TESTS, help="test paths to run against each mutation")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mona-mutations-") as scratch:
        tree = scratch_copy(Path(scratch) / "repo")
        if run_tests(tree, args.tests).returncode:
            raise SystemExit("the tests fail without any mutation: fix them first")
        killed = [check(tree, name, args.tests) for name in (args.only or list(MUTATIONS))]
    print(f"{sum(killed)} of {len(killed)} mutations killed")
    return 0 if all(killed) else 1


if __name__ == "__main__":
    sys.exit(main())
