#!/usr/bin/env bash
# Round strategies and 3 -> 1,000-client scaling on whatever accelerator jax sees, in <= 8 min.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR]          # JSON into OUTPUT_DIR, else $OUT, else /tmp
#   GPU_BENCH_SIZE=tiny bash benchmarks/gpu.sh    # seconds-long smoke run (works on a CPU)
#
# Writes devices.txt, round.json (benchmarks/round.py: naive loop vs the engine's vmap and
# sequential rounds and chunked-vmap candidates at 3, 8 and 32 clients) and scaling.json
# (benchmarks/scaling.py: 32 per round from populations of 32 and 1,000, plus 8 per round).
# Each step has its own time limit, so one slow step cannot eat the others' time; a step
# that fails or times out leaves a note in status.txt and the script goes on.
#
# Needs jax, flax, optax, numpy and ml_collections. A GPU image without ml_collections can
# be given a wheel in .wheels/ beside the repo root (`pip download ml-collections --no-deps
# -d .wheels` on a machine with a registry); it is installed from there, offline.
set -uo pipefail

cd "$(dirname "$0")/.."
OUTPUT_DIR="${1:-${OUT:-/tmp/fedgan_gpu_bench}}"
PYTHON="${PYTHON:-python3}"
SIZE="${GPU_BENCH_SIZE:-full}"
mkdir -p "$OUTPUT_DIR"
STATUS="$OUTPUT_DIR/status.txt"
: > "$STATUS"

if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  if [ -d .wheels ]; then
    "$PYTHON" -m pip install -q --no-index --find-links .wheels ml-collections absl-py
  else
    echo "ml_collections is missing and .wheels/ holds no wheel of it" | tee -a "$STATUS"
    exit 1
  fi
fi

# The round programs are identical across client counts and scaling points (same shapes):
# compile each once.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

"$PYTHON" -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())' \
  > "$OUTPUT_DIR/devices.txt" 2>&1
cat "$OUTPUT_DIR/devices.txt"

if [ "$SIZE" = tiny ]; then
  ROUND_ARGS=(--clients=2 --rounds=1 --config_arg=runlocal --examples_per_client=8
              --strategies=naive,vmap,vmap_chunk2)
  SCALING_ARGS=(--populations=2,6 --clients_per_round=2 --participants=4 --rounds=1
                --config_arg=runlocal --examples_per_client=8)
  ROUND_LIMIT=400; SCALING_LIMIT=300
else
  ROUND_ARGS=(--clients=3,8,32 --rounds=5 --examples_per_client=32
              --strategies=naive,vmap,sequential,vmap_chunk8,vmap_chunk16)
  SCALING_ARGS=(--populations=32,1000 --clients_per_round=32 --participants=8 --rounds=5
                --examples_per_client=16 --strategy=vmap)
  ROUND_LIMIT=270; SCALING_LIMIT=180
fi

run_step() {  # name, limit in seconds, command...
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUTPUT_DIR/$name.log" 2>&1
  local code=$?
  echo "$name: exit $code after $((SECONDS - started)) s (limit $limit s)" | tee -a "$STATUS"
}

run_step round "$ROUND_LIMIT" "$PYTHON" benchmarks/round.py "${ROUND_ARGS[@]}" \
  --json="$OUTPUT_DIR/round.json"
run_step scaling "$SCALING_LIMIT" "$PYTHON" benchmarks/scaling.py "${SCALING_ARGS[@]}" \
  --json="$OUTPUT_DIR/scaling.json"
ls -l "$OUTPUT_DIR"
