#!/usr/bin/env bash
# Round strategies, 3 -> 1,000-client scaling, compile/efficiency, the PyTorch peer and the
# 128 px ZhangLab round in float32 and bfloat16 on whatever accelerator jax sees, in <= 13 min.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR]          # JSON into OUTPUT_DIR, else $OUT, else /tmp
#   GPU_BENCH_SIZE=tiny bash benchmarks/gpu.sh    # seconds-long smoke run (works on a CPU)
#   ZHANGLAB_ROOT=/data/zhanglab bash benchmarks/gpu.sh   # where chest_xray/train is
#                                                 # (default ../shared/data/zhanglab)
#
# Writes round.json (benchmarks/round.py: the naive loop vs the engine's vmap
# and sequential rounds and a chunked-vmap candidate, 32 clients first, then the phantom
# default of 4), scaling.json (benchmarks/scaling.py: 32 per round from populations of 32
# and 1,000), compile.json (benchmarks/compile.py: cold compile of the vmap round, XLA's
# FLOP count, the f32 matmul peak and the round's fraction of it) and, where torch sees a
# GPU, torch_round.json (benchmarks/torch_round.py --device=cuda), and real128_float32.json /
# real128_bfloat16.json (benchmarks/config_round.py on configs/zhanglab.py:size=128, 32 client
# slots, naive loop vs vmap: images/s, round time, compile time, peak device memory, the vmap
# round's fraction of the device's measured matmul peak in that dtype; skipped when
# ZHANGLAB_ROOT has no chest_xray/train). Each step has its own time limit, so one slow step
# cannot eat the others' time; a step that fails or times out leaves a note in status.txt
# (its rows so far stay in log.txt) and the script goes on.
# status.txt also holds the versions and the device; at most 8 files are written.
#
# Needs jax, flax, optax, numpy, scipy, ml_collections and dp_accounting. Wheels in .whl/
# beside the repo root are installed first, offline, into a private folder that takes
# precedence (the image is left as is): give an image without ml_collections/dp_accounting
# (GPU images often lack them), or with other flax/optax versions than were tested, the
# wheels fetched on a machine with a registry:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl ml-collections dp-accounting dm-tree flax optax
set -uo pipefail

cd "$(dirname "$0")/.."
OUTPUT_DIR="${1:-${OUT:-/tmp/fedgan_gpu_bench}}"
PYTHON="${PYTHON:-python3}"
SIZE="${GPU_BENCH_SIZE:-full}"
mkdir -p "$OUTPUT_DIR"
STATUS="$OUTPUT_DIR/status.txt"
: > "$STATUS"
export PYTHONUNBUFFERED=1

if compgen -G '.whl/*.whl' > /dev/null; then
  SITE="$(mktemp -d)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" .whl/*.whl || { echo "installing .whl/ failed" | tee -a "$STATUS"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c 'import ml_collections, dp_accounting'; then
  echo "ml_collections or dp_accounting is missing; put their wheels in .whl/" | tee -a "$STATUS"
  exit 1
fi

"$PYTHON" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.default_backend(), jax.devices())' 2>&1 | tee -a "$STATUS"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader 2>&1 | tee -a "$STATUS"
LOG="$OUTPUT_DIR/log.txt"
: > "$LOG"

# The round programs are identical across scaling points (same shapes): compile each once.
# compile.py measures cold compiles, so it runs without this cache.
CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}"

if [ "$SIZE" = tiny ]; then
  ROUND_ARGS=(--clients=2 --rounds=1 --config_arg=runlocal --examples_per_client=8
              --strategies=naive,vmap,vmap_chunk2)
  SCALING_ARGS=(--populations=2,6 --clients_per_round=2 --participants= --rounds=1
                --config_arg=runlocal --examples_per_client=8)
  COMPILE_ARGS=(--clients=2 --compile_clients=2 --strategies=vmap --config_arg=runlocal
                --examples_per_client=8 --matmul_size=256)
  TORCH_ARGS=(--clients=2 --rounds=1)
  REAL_VARIANT=runlocal
  REAL_ARGS=(--clients=2 --rounds=1 --strategies=naive,vmap --matmul_size=256)
  ROUND_LIMIT=400; SCALING_LIMIT=300; COMPILE_LIMIT=300; TORCH_LIMIT=120; REAL_LIMIT=400
else
  ROUND_ARGS=(--clients=32,4 --rounds=5 --examples_per_client=32
              --strategies=naive,vmap,sequential,vmap_chunk8)
  SCALING_ARGS=(--populations=32,1000 --clients_per_round=32 --participants= --rounds=5
                --examples_per_client=16 --strategy=vmap)
  COMPILE_ARGS=(--clients=32 --compile_clients=4 --strategies=vmap --matmul_size=8192)
  TORCH_ARGS=(--clients=32,4 --rounds=5)
  REAL_VARIANT=size=128
  REAL_ARGS=(--clients=32 --rounds=3 --strategies=naive,vmap --matmul_size=8192)
  ROUND_LIMIT=240; SCALING_LIMIT=80; COMPILE_LIMIT=120; TORCH_LIMIT=40; REAL_LIMIT=150
fi

run_step() {  # name, limit in seconds, command...
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  echo "=== $name: $*" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local code=$?
  echo "$name: exit $code after $((SECONDS - started)) s (limit $limit s)" | tee -a "$STATUS"
}

run_step round "$ROUND_LIMIT" env JAX_COMPILATION_CACHE_DIR="$CACHE_DIR" \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  "$PYTHON" -m benchmarks.round "${ROUND_ARGS[@]}" --json="$OUTPUT_DIR/round.json"
run_step scaling "$SCALING_LIMIT" "$PYTHON" -m benchmarks.scaling "${SCALING_ARGS[@]}" \
  --compilation_cache_dir="$CACHE_DIR" --json="$OUTPUT_DIR/scaling.json"
ROUND_JSON=()
[ -s "$OUTPUT_DIR/round.json" ] && ROUND_JSON=(--round_json="$OUTPUT_DIR/round.json")
run_step compile "$COMPILE_LIMIT" env -u JAX_COMPILATION_CACHE_DIR \
  "$PYTHON" -m benchmarks.compile "${COMPILE_ARGS[@]}" "${ROUND_JSON[@]}" \
  --json="$OUTPUT_DIR/compile.json"
if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  run_step torch_round "$TORCH_LIMIT" "$PYTHON" -m benchmarks.torch_round --device=cuda \
    "${TORCH_ARGS[@]}" "${ROUND_JSON[@]}" --json="$OUTPUT_DIR/torch_round.json"
else
  echo "torch_round: skipped (torch sees no GPU)" | tee -a "$STATUS"
fi
ZHANGLAB_ROOT="${ZHANGLAB_ROOT:-../shared/data/zhanglab}"
if [ -d "$ZHANGLAB_ROOT/chest_xray/train" ]; then
  for PRECISION in float32 bfloat16; do  # One process each: peak memory is per process.
    run_step "real128_$PRECISION" "$REAL_LIMIT" env JAX_COMPILATION_CACHE_DIR="$CACHE_DIR" \
      "$PYTHON" -m benchmarks.config_round --config="configs/zhanglab.py:$REAL_VARIANT" \
      --config.data.root="$ZHANGLAB_ROOT" --config.runtime.precision="$PRECISION" \
      "${REAL_ARGS[@]}" --json="$OUTPUT_DIR/real128_$PRECISION.json"
  done
else
  echo "real128: skipped (no $ZHANGLAB_ROOT/chest_xray/train; set ZHANGLAB_ROOT)" | tee -a "$STATUS"
fi
ls -l "$OUTPUT_DIR"
