#!/usr/bin/env bash
# Whole-pipeline variants of the phantom default side by side on one accelerator, to choose
# which few are worth a full CPU run (the targets are CPU numbers; GPU rounds run the `vmap`
# strategy, whose rounding differs, so a GPU row only ranks variants).
#
#   bash benchmarks/gpu_sweep.sh [OUTPUT_DIR [VARIANTS_FILE]]   # OUTPUT_DIR: else $OUT, else /tmp
#
# Each variant is a line `name|config|overrides...` of VARIANTS_FILE (default: the first sweep's,
# benchmarks/results/gpu_h200_sweep/variants1.txt).
# All run at once (one process each, no memory preallocation), each under PER_RUN_LIMIT
# seconds; summary.jsonl gets one line per variant (its results.json's anomaly, conditioning
# and privacy fields, or the error and the last metrics row), log.txt the tails of the logs.
# Wheels in .whl/ are installed first, as in benchmarks/gpu.sh.
set -uo pipefail

# Paths given on the command line are relative to where the script was started.
OUTPUT_DIR="$(realpath -m "${1:-${OUT:-/tmp/fedgan_gpu_sweep}}")"
VARIANTS_FILE="$(realpath -m "${2:-$(dirname "$0")/results/gpu_h200_sweep/variants1.txt}")"
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PER_RUN_LIMIT="${PER_RUN_LIMIT:-480}"
mkdir -p "$OUTPUT_DIR"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if compgen -G '.whl/*.whl' > /dev/null; then
  SITE="$(mktemp -d)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" .whl/*.whl || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

VARIANTS=$(cat "$VARIANTS_FILE") || exit 1

RUNS="$(mktemp -d)"
while IFS='|' read -r name config overrides; do
  [ -z "$name" ] && continue
  # shellcheck disable=SC2086
  timeout "$PER_RUN_LIMIT" "$PYTHON" -m fedgan_jax.main --config="$config" \
    --workdir="$RUNS/$name" $overrides > "$RUNS/$name.log" 2>&1 &
done <<< "$VARIANTS"
wait

SUMMARY="$OUTPUT_DIR/summary.jsonl"
: > "$SUMMARY"
: > "$OUTPUT_DIR/log.txt"
while IFS='|' read -r name config overrides; do
  [ -z "$name" ] && continue
  { echo "== $name ($config $overrides)"; tail -n 15 "$RUNS/$name.log"; } >> "$OUTPUT_DIR/log.txt"
  "$PYTHON" - "$RUNS/$name" "$name" "$config" "$overrides" >> "$SUMMARY" <<'EOF'
import json, os, sys
workdir, name, config, overrides = sys.argv[1:5]
row = {'variant': name, 'config': config, 'overrides': overrides}
try:
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  anomaly = {k: v for k, v in results['anomaly'].items() if k != 'roc'}
  row.update(anomaly=anomaly, conditioning=results.get('conditioning'),
             privacy=results.get('privacy'), wall_time_s=results.get('wall_time_s'))
except (OSError, KeyError, ValueError) as error:
  row['error'] = repr(error)
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      row['last_metrics'] = json.loads(f.readlines()[-1])
  except (OSError, IndexError, ValueError):
    pass
print(json.dumps(row))
EOF
done <<< "$VARIANTS"
cat "$SUMMARY"
