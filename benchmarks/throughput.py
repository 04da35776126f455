"""Benchmark: training throughput of every method under the speed knobs, through the trainer's real step path.

Each (method, variant) cell runs in a fresh Python process (so thread settings, compile caches and the peak-memory
counter of one cell cannot leak into the next): it builds the run state with the trainer's ``_new_state`` (method,
memory format, optimiser, threads) and times the trainer's ``_train_step`` (batch sampling with augmentation, the
method's loss step under the run's autocast, backward, SGD step, EMA / bank updates) on phantom slices of
``--size`` x ``--size``, so no dataset is needed. Reported: the median ms/step over ``--steps`` steps after
``--warmup`` steps, it/s = 1000 / that median, and the peak memory (the process's peak RSS on the CPU, which includes
torch itself; ``torch.cuda.max_memory_allocated`` on CUDA), then each method's step time relative to the supervised
step of the same variant. Goal of the issue: a MONA fine-tune step <= 2x supervised on CUDA, <= 3x on the CPU.

Variants: ``baseline`` (defaults), ``channels_last``, ``bf16`` (``amp="bf16"``), ``fused`` (fused SGD),
``threads1`` / ``threads2`` (``threads=1`` / ``2``), ``compile`` (``torch.compile`` of every network's ``forward`` and
``forward_features``; CUDA only here: on the CPU the compile time alone exceeds a benchmark's budget),
``device_data`` (``data_on_device``: the slice bank on the device, batched augmentation there) and ``all``
(channels_last + bf16 + fused + device_data).

    .venv/bin/python benchmarks/throughput.py --device cpu --size 128 --steps 10 --variants baseline,channels_last
    python benchmarks/throughput.py --device cuda --variants baseline,channels_last,bf16,fused,compile --json t.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from mona_core.data.phantoms import make_phantom
from mona_core.data.slicing import image_to_slices, label_to_slices
from mona_core.training.config import TrainConfig
from mona_core.training.methods import _REGISTRY
from mona_core.training.slices import SliceBank
from mona_core.training.trainer import RunState, _new_state, _train_step, hold_on_device

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "channels_last": {"channels_last": True},
    "bf16": {"amp": "bf16"},
    "fused": {"fused_optimizer": True},
    "threads1": {"threads": 1},
    "threads2": {"threads": 2},
    "compile": {},
    "device_data": {"data_on_device": True},
    "all": {"channels_last": True, "amp": "bf16", "fused_optimizer": True, "data_on_device": True},
}
NUM_CLASSES = 4


def phantom_bank(size: int) -> SliceBank:
    """Labelled slices of one phantom volume and unlabelled slices of another, at ``size`` x ``size``."""
    labelled_image, label = make_phantom(seed=0)
    unlabelled_image, _ = make_phantom(seed=1)
    return SliceBank(
        images=image_to_slices(labelled_image.array, "mri", size),
        labels=label_to_slices(label.array, size),
        unlabelled=image_to_slices(unlabelled_image.array, "mri", size),
    )


def cell_config(cell: dict[str, Any]) -> TrainConfig:
    """The training config of one cell: protocol defaults, the variant's knobs, a schedule long enough that the
    learning rate never decays during the benchmark. ``bcp`` is timed in its self-training stage (bidirectional
    copy-paste with the teacher), where it spends most of a run, not in its labelled-only pre-training."""
    return TrainConfig(
        method=cell["method"],
        bcp_pretrain_fraction=0.0,
        batch_size=cell["batch"],
        labelled_batch_size=cell["labelled"],
        size=cell["size"],
        device=cell["device"],
        iterations=1_000_000,
        lr_step=1_000_000,
        **VARIANTS[cell["variant"]],
    )


def compile_networks(state: RunState) -> None:
    """``torch.compile`` each network's ``forward`` and, where it has one, ``forward_features`` (MONA's path)."""
    for module in state.method.modules().values():
        module.compile()
        for name in ("forward_features",):
            if hasattr(module, name):
                setattr(module, name, torch.compile(getattr(module, name)))


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Time one (method, variant) in this process; returns ms per step, it/s and peak memory."""
    device = torch.device(cell["device"])
    config = cell_config(cell)
    bank = phantom_bank(config.size)
    torch.manual_seed(config.seed)
    state = _new_state(config, NUM_CLASSES, device)
    hold_on_device(state, config, bank, device)
    if cell["variant"] == "compile":
        compile_networks(state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [_timed_step(state, config, bank, device) for _ in range(cell["warmup"] + cell["steps"])]
    median_ms = 1000.0 * statistics.median(times[cell["warmup"] :])
    return {
        **cell,
        "ms_per_step": round(median_ms, 1),
        "it_per_s": round(1000.0 / median_ms, 3),
        "peak_mb": round(_peak_mb(device)),
        "threads": torch.get_num_threads(),
    }


def _timed_step(state: RunState, config: TrainConfig, bank: SliceBank, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    _train_step(state, config, bank, device)
    state.step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_isolated(cell: dict[str, Any]) -> dict[str, Any]:
    """Run one cell in a fresh interpreter (this script with ``--cell``); a failure is reported, not raised."""
    command = [sys.executable, __file__, "--cell", json.dumps(cell)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {**cell, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def skip_reason(variant: str, device: str) -> str | None:
    """Why a variant is not run on ``device`` (None: it is run)."""
    if variant == "compile" and device == "cpu":
        return "compile skipped on cpu"
    return None


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (method, variant) cell, ``--rounds`` times, variants interleaved within a method so that the shared
    machine's drifting load hits every variant alike; with several rounds a cell keeps its median round."""
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_index in range(args.rounds):
        for method in args.methods:
            for variant in args.variants:
                cell = _cell(args, method, variant)
                reason = skip_reason(variant, args.device)
                result = {**cell, "error": reason} if reason else run_isolated(cell)
                rounds.setdefault((method, variant), []).append(result)
                print(f"round {round_index + 1}: {_describe(result)}", file=sys.stderr, flush=True)
    return [_median_round(results) for results in rounds.values()]


def _cell(args: argparse.Namespace, method: str, variant: str) -> dict[str, Any]:
    return {
        "method": method,
        "variant": variant,
        "device": args.device,
        "size": args.size,
        "batch": args.batch,
        "labelled": args.labelled,
        "steps": args.steps,
        "warmup": args.warmup + (2 if variant == "compile" else 0),  # recompiles: grad / no-grad, batch sizes
    }


def _describe(result: dict[str, Any]) -> str:
    where = f"{result['method']:>12} {result['variant']:<13}"
    if result.get("error"):
        return f"{where} {result['error']}"
    return f"{where} {result['ms_per_step']:8.1f} ms/step {result['it_per_s']:7.2f} it/s {result['peak_mb']:6d} MB"


def _median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    good = sorted((r for r in results if not r.get("error")), key=lambda r: float(r["ms_per_step"]))
    if not good:
        return results[-1]
    chosen = good[(len(good) - 1) // 2]
    return {**chosen, "rounds_ms": [r["ms_per_step"] for r in good]}


def markdown(results: list[dict[str, Any]], methods: list[str], variants: list[str]) -> str:
    """Tables method x variant: it/s (ms/step), step time relative to supervised, speed-up over baseline, memory."""
    cells = {(r["method"], r["variant"]): r for r in results}

    def table(title: str, render: Any) -> str:
        head = f"| {title} | " + " | ".join(variants) + " |\n|---|" + "---|" * len(variants) + "\n"
        rows = [f"| {m} | " + " | ".join(render(m, v) for v in variants) + " |" for m in methods]
        return head + "\n".join(rows) + "\n"

    def ms(method: str, variant: str) -> float | None:
        cell = cells.get((method, variant))
        return None if cell is None or cell.get("error") else float(cell["ms_per_step"])

    def it_s(m: str, v: str) -> str:
        value = ms(m, v)
        return cells[(m, v)].get("error") or "-" if value is None else f"{1000 / value:.2f} ({value:.0f} ms)"

    def ratio(m: str, v: str, other: tuple[str, str]) -> str:
        value, base = ms(m, v), ms(*other)
        return "-" if value is None or base is None else f"{value / base:.2f}x"

    def memory(m: str, v: str) -> str:
        return "-" if ms(m, v) is None else str(cells[(m, v)]["peak_mb"])

    return "\n".join(
        [
            table("it/s (ms/step)", it_s),
            table("step time / supervised", lambda m, v: ratio(m, v, ("supervised", v))),
            table("speed-up over baseline", lambda m, v: ratio(m, "baseline", (m, v))),
            table("peak MB", memory),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, default=None, help="slice side (default 256 on cuda, 128 on cpu)")
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--labelled", type=int, default=None, help="labelled slices per batch (default: half)")
    parser.add_argument("--methods", default=",".join(_REGISTRY), help="comma list (default: every method)")
    parser.add_argument("--variants", default="baseline,channels_last,bf16,fused", help=f"among {list(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the grid; each cell keeps its median round")
    parser.add_argument("--json", default=None, help="also write every cell as JSON to this file")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one cell, JSON in and out
    args = parser.parse_args(argv)
    args.size = args.size or (256 if args.device == "cuda" else 128)
    args.methods = [m for m in args.methods.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.methods) - set(_REGISTRY)) + sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"expected methods among {list(_REGISTRY)} and variants among {list(VARIANTS)}, got {unknown}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("expected a CUDA device for --device cuda, got none")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return 0
    results = measure(args)
    print(f"device {args.device}, size {args.size}, batch {args.batch}, steps {args.steps} (+{args.warmup} warm-up),")
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}, rounds {args.rounds}\n")
    print(markdown(results, args.methods, args.variants))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"args": {k: v for k, v in vars(args).items() if k != "cell"}, "results": results}, handle, indent=2
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
