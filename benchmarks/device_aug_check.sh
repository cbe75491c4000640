#!/usr/bin/env bash
# GPU check of data.augment_on=device (issue #5 item 3), about 5 minutes on one H100/H200:
#  1. same parameters -> same crops on the CPU and on CUDA; time and memory of one B = 128 batch;
#  2. the device-views tests with this machine's torch (the per-image path runs on its CPU);
#  3. `mcl bench`: per-core loader rates of both paths on this machine's CPU, the batched augmentation
#     on the GPU, the efficient paper-mode step, and the loader wait at 7 workers, per-image path;
#  4. the loader wait again with data.augment_on=device;
#  5. a short `mcl pretrain` on CUDA (bf16-mixed) with data.augment_on=device.
# Usage: bash benchmarks/device_aug_check.sh   (results in $OUT, default /tmp/mcl-device-aug)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RES=${OUT:-/tmp/mcl-device-aug}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
if ! $PY -c "import pycocotools" 2>/dev/null; then   # only COCO file writing needs it; stub it for these checks
  mkdir -p /tmp/mcl-stub/pycocotools && touch /tmp/mcl-stub/pycocotools/__init__.py
  printf 'def encode(m):\n    return [{"size": list(m.shape[:2]), "counts": b""} for _ in range(m.shape[-1])]\n' \
    > /tmp/mcl-stub/pycocotools/mask.py
  export PYTHONPATH=/tmp/mcl-stub
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cpus', len(os.sched_getaffinity(0)))"
echo "== 1. CUDA vs CPU, timing of one batch"
timeout 90 $PY benchmarks/device_aug_check.py cuda
echo "== 2. tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/data/test_device_views.py tests/bench/test_bench_device_aug.py 2>&1 | tail -n 4
BENCH=(--device cuda --quick --skip-flops --recipe paper_r50_in1k_100ep --precision bf16 --channels-last --modes efficient
       --no-references --repeats 5 --loader-steps 8)
echo "== 3. mcl bench (per-image loader)"
timeout 200 $PY -m mcl.cli bench "${BENCH[@]}" --out "$RES/bench-loader.json" --quiet 2>&1 | tail -n 40
echo "== 4. mcl bench, loader wait with data.augment_on=device"
timeout 150 $PY -m mcl.cli bench "${BENCH[@]}" --skip-timing --out "$RES/bench-device.json" --quiet data.augment_on=device 2>&1 | tail -n 6
echo "== 5. mcl pretrain on CUDA with data.augment_on=device"
timeout 90 $PY -m mcl.cli pretrain --config cpu_smoke --out /tmp/mcl-aug-run data.augment_on=device trainer.accelerator=gpu \
  trainer.precision=bf16-mixed trainer.max_steps=20 data.num_workers=4 trainer.progress_bar=false 2>&1 | tail -n 9
