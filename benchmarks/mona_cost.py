"""Benchmark: the cost of one MONA step against one supervised step at the same batch, and peak memory.

Times forward + backward + SGD step (median of ``--repeats`` after a warm-up) for every method at the same batch
(``--labelled`` + ``--unlabelled`` slices of ``--size`` x ``--size``; the supervised step gets the same slices, all
with labels, so every method processes the same images), and reports the peak memory of the MONA fine-tuning step:
CUDA's max allocated memory on a GPU, the process's peak RSS growth on the CPU. Goals: a MONA fine-tune step <= 3x
a supervised step; a 4 + 4 batch at 256x256 <= 4 GB.

    .venv/bin/python benchmarks/mona_cost.py [--size 256] [--labelled 4] [--unlabelled 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from typing import Any

import torch

from mona_core.models import UNetConfig
from mona_core.training.config import TrainConfig
from mona_core.training.methods import Batch, build_method


def make_batch(labelled: int, unlabelled: int, size: int, device: torch.device) -> Batch:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (labelled, size, size), generator=generator)
    images = torch.rand(labelled, 1, size, size, generator=generator)
    return Batch(images, labels, torch.rand(unlabelled, 1, size, size, generator=generator)).to(device)


def time_method(method_name: str, batch: Batch, device: torch.device, repeats: int) -> float:
    """Median seconds of one full training step (loss, backward, SGD update, EMA / bank updates)."""
    labelled, total = len(batch.images), len(batch.images) + len(batch.unlabelled)
    config = TrainConfig(method=method_name, batch_size=total, labelled_batch_size=labelled)
    if method_name == "supervised":
        config = TrainConfig(method="supervised", batch_size=total)
        labels = batch.labels.repeat((total + labelled - 1) // labelled, 1, 1)[:total]
        batch = Batch(batch.all_images, labels, batch.unlabelled[:0])
    method = build_method(config, UNetConfig(), device)
    optimizer = torch.optim.SGD(method.trainable(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    times = []
    for step in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = method.step(batch, step)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        method.after_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(batch: Batch, device: torch.device) -> dict[str, Any]:
    labelled = len(batch.images)
    config = TrainConfig(method="finetune", batch_size=labelled + len(batch.unlabelled), labelled_batch_size=labelled)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    method = build_method(config, UNetConfig(), device)
    for step in range(2):
        method.step(batch, step)["loss"].backward()  # type: ignore[no-untyped-call]
        method.after_step(step)
    if device.type == "cuda":
        return {"cuda_max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
    return {"rss_peak_growth_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--labelled", type=int, default=4)
    parser.add_argument("--unlabelled", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="supervised,mean_teacher,cps,pretrain,finetune")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = make_batch(args.labelled, args.unlabelled, args.size, device)
    memory = peak_memory_mb(batch, device)  # first, so the RSS growth is the MONA step's own
    seconds = {name: round(time_method(name, batch, device, args.repeats), 3) for name in args.methods.split(",")}
    ratio = (
        {name: round(value / seconds["supervised"], 2) for name, value in seconds.items()}
        if "supervised" in seconds
        else {}
    )
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": f"{args.labelled}+{args.unlabelled}",
        "size": args.size,
        "step_seconds": seconds,
        "relative_to_supervised": ratio,
        "finetune_peak_memory": memory,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
