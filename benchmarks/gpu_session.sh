#!/usr/bin/env bash
# The GPU checks of issue 8 as one prepared command for a lent GPU machine (one call, well inside 10 minutes):
#   1. the CUDA tests (`pytest -m gpu`): every method trains on CUDA and exports; CUDA augmentation; ORT CUDA provider;
#   2. throughput per method x speed knob on CUDA (baseline, channels_last, bf16, fused SGD, slices on the device, all);
#   3. the paper's ACDC protocol (`benchmarks/acdc.py --protocol paper`), several methods x seeds at once on the card,
#      from an 8-bit pack made beforehand on a machine with the data:
#        .venv/bin/python benchmarks/acdc.py --protocol paper --pack gpu-carry/acdc256.xz
#      (the NIfTI files and SimpleITK do not fit one call's 64 MiB transfer together).
# Outputs go to $OUT (the device tool's return folder) or ./gpu-output. Each part has its own time limit, so a slow
# part cannot eat the others' time; acdc.py resumes interrupted runs, so a second call continues the protocol.
#
#   bash benchmarks/gpu_session.sh [PROTOCOL_SECONDS] [METHODS] [SEEDS]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-output}
mkdir -p "$out"
protocol_s=${1:-330}
methods=${2:-supervised,mean_teacher,bcp,finetune,mona}
seeds=${3:-3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
carry=gpu-carry   # wheels (.whl) and the ACDC pack, carried by the device tool

if compgen -G "$carry/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$carry"/*.whl && export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/training/test_trainer.py tests/data/test_gpu_augment.py \
  tests/inference/test_segmenter.py 2>&1 | tail -n 15 | tee "$out/gpu-tests.txt"

timeout 150 python3 benchmarks/throughput.py --device cuda --steps 30 --warmup 5 \
  --variants baseline,channels_last,bf16,fused,device_data,all --json "$out/throughput.json" 2>&1 | tail -n 40 \
  | tee "$out/throughput.md"

if [ -f "$carry/acdc256.xz" ]; then
  timeout "$protocol_s" python3 benchmarks/acdc.py --protocol paper --packed "$carry/acdc256.xz" --device cuda \
    --methods "$methods" --seeds "$seeds" --jobs 15 --threads 1 --out bench-output/paper 2>&1 | tail -n 60 \
    | tee "$out/paper.txt"
  cp bench-output/paper/results.md bench-output/paper/results.json "$out/" 2>/dev/null || true
fi
