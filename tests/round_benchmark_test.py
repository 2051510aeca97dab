"""A smoke run of benchmarks/round.py's library call, so the benchmark keeps up with the engine."""

from benchmarks import round as round_bench
from benchmarks import round_lib
from conftest import with_tiny_model


def test_round_benchmark_times_the_loop_and_an_engine_execution_on_the_same_math(monkeypatch):
  config_of = round_lib.benchmark_config
  # What is checked is the plumbing, not the networks' width (conftest.TINY_MODEL).
  monkeypatch.setattr(round_lib, 'benchmark_config',
                      lambda *args: with_tiny_model(config_of(*args)))
  report = round_bench.run([2], ['naive', 'threads'], rounds=1, warmup=0, examples_per_client=4,
                           config_arg='runlocal', local_steps=1)
  rows = {row['strategy']: row for row in report['results']}
  assert set(rows) == {'naive', 'threads'} and rows['threads']['clients'] == 2
  assert rows['naive']['speedup_vs_naive'] == 1.0 and rows['threads']['round_s'] > 0
  # Both start from one state and see the same inputs: the same params up to rounding.
  assert rows['threads']['max_abs_diff_vs_naive'] < 1e-3
  assert report['machine']['cpu_count'] >= 1 and report['config']['local_steps'] == 1
