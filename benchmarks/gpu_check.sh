#!/usr/bin/env bash
# GPU check for `mcl bench`: paper mode (ResNet-50, B = 128, 224 px, 4 levels) on one GPU,
# faithful and efficient, bf16 autocast + channels_last, plus supervised ResNet-50 and MoCo v2
# steps of the same batch; FLOPs; data-pipeline rates per core; loader wait at 7 workers.
# Budget: under 8 minutes on one H100/H200 (about 3-4 expected; the timing section stops adding
# repeats after BENCH_BUDGET seconds).
#
# Usage, from anywhere:   bash benchmarks/gpu_check.sh [extra `mcl bench` flags]
# Environment:
#   PYTHON=python3        interpreter to use
#   BENCH_BUDGET=240      seconds for the timing section
#   OUT=/some/dir         if set, results are also copied there (the device runner fetches $OUT)
#   RESULTS=benchmarks/results   where the JSON + markdown go
#   BENCH_DEVICE=cuda     `cpu` runs the same flow on a CPU, to test the script (add shrinking flags,
#                         e.g. `BENCH_DEVICE=cpu bash benchmarks/gpu_check.sh --tiny`)
# Dependencies: nothing is installed when torch, torchvision, lightning, yaml, PIL and pycocotools
# import. Otherwise the missing ones are installed with `pip --no-index --find-links .whl` from wheels
# carried in the repository's (git-ignored) `.whl/` folder; without them the script stops.
# mcl itself is used from `src/` (PYTHONPATH) when it is not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${BENCH_BUDGET:-240}
RESULTS=${RESULTS:-benchmarks/results}
DEVICE=${BENCH_DEVICE:-cuda}
mkdir -p "$RESULTS"

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"

echo "== Python packages"
missing=$($PY - <<'EOF'
import importlib.util
need = {"torch": "torch", "torchvision": "torchvision", "lightning": "lightning", "yaml": "pyyaml",
        "PIL": "pillow", "numpy": "numpy", "pycocotools": "pycocotools"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing from .whl/: $missing"
    $PY -m pip install --no-index --find-links .whl $missing || { echo "pip install from .whl failed"; exit 1; }
  else
    echo "missing Python packages: $missing (and no .whl/ folder of wheels to install them from)"; exit 1
  fi
fi
if ! $PY -c "import mcl.bench" 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
if [ "$DEVICE" = "cpu" ]; then
  NAME="cpu-$(hostname)"
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "torch sees no GPU"; exit 1; }
  NAME=$($PY -c "import re, torch; print(re.sub(r'[^A-Za-z0-9._-]+', '-', torch.cuda.get_device_name(0)).strip('-'))")
fi
JSON="$RESULTS/bench-$NAME.json"

echo "== mcl bench (paper mode on $NAME)"
# --quick: data rates on 12 images per pipeline; timing: 3 warm-up + up to 10 interleaved rounds.
timeout 450 $PY -m mcl.cli bench --device "$DEVICE" --recipe paper_r50_in1k_100ep --precision bf16 --channels-last \
  --quick --repeats 10 --budget "$BUDGET" --out "$JSON" "$@"
status=$?
echo "mcl bench exit status: $status"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp -f "$RESULTS/bench-$NAME".* "$OUT"/ 2>/dev/null || true
fi
exit $status
