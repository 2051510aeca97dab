"""Timed scripts behind BENCHMARKS.md, run from the repository root as modules:

    python -m benchmarks.round --clients=3,8,32 --json=/tmp/round.json

Run that way, the repository root is on `sys.path`, so the scripts import `fedgan_jax`,
`configs` and each other (`benchmarks.round_lib`) without editing `sys.path`.
"""
