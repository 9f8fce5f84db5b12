#!/usr/bin/env bash
# The GPU measurements, prepared to run in one go (about 9½ minutes at most) on a machine with CUDA:
#
#   bash benchmarks/gpu_check.sh                 # every part, in this order
#   bash benchmarks/gpu_check.sh big speed       # only some parts (e.g. to rerun what timed out)
#
# Parts (each under its own time limit; one that fails or times out does not stop the others):
#   replay  benchmarks/replay_check.py: the largest |replayed θ − recorded θ| on CUDA, with and
#           without torch's deterministic algorithms, and θ[T] against the same training on the CPU
#   big     benchmarks/memory.py: 50,000 random MNIST-size images × 20 epochs, the paper's CNN,
#           train + exact score (time; peak host and GPU memory), progress every tenth
#   speed   benchmarks/speed.py --device cuda: score_over_train on the real MNIST test set
#   scale   benchmarks/scale.py --device cuda: time and memory against images and parameters
# Results (reports and logs) go to $OUT when set, else to benchmarks/results/gpu/. speed and scale
# read the MNIST IDX files from $MNIST_DIR when set, else from the benchmarks' default data folder.
# Python: $PYTHON, else python3 (with torch built for CUDA). Nothing here has run on a GPU yet.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONUNBUFFERED=1
DATA=()
[ -n "${MNIST_DIR:-}" ] && DATA=(--data-dir "$MNIST_DIR")

{ nvidia-smi || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
            "available", torch.cuda.is_available())'; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)' || {
  echo "error: torch sees no CUDA GPU here; nothing measured"; exit 2; }

part() {  # name, seconds, command…
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s): $*"
  local began=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - began)) s$([ $rc = 124 ] && echo ' (timed out)')"
  tail -n 4 "$OUT/$name.log"
}

PARTS=("$@")
[ ${#PARTS[@]} = 0 ] && PARTS=(replay big speed scale)
for p in "${PARTS[@]}"; do
  case $p in
    replay) part replay 90 "$PY" benchmarks/replay_check.py --device cuda --threads 8 \
              --out "$OUT/replay-check-cuda.md" ;;
    big)    part big 240 "$PY" benchmarks/memory.py --device cuda --images 50000 \
              --shape 28x28x1 --model cnn --epochs 20 --only-after \
              --out "$OUT/mnist-size-50k-20-epochs-cuda.md" ;;
    speed)  part speed 90 "$PY" benchmarks/speed.py --device cuda "${DATA[@]}" --repeats 3 \
              --out "$OUT/speed-cuda.md" ;;
    scale)  part scale 150 "$PY" benchmarks/scale.py --device cuda "${DATA[@]}" --repeats 1 \
              --out "$OUT/scale-cuda.md" ;;
    *) echo "unknown part $p: use replay, big, speed, scale" ;;
  esac
done
ls -l "$OUT"
