"""The real-data protocol's plan per seed (benchmarks/protocol_lib.py): which binaries run."""

import json
import os

import pytest

from benchmarks import protocol_lib


@pytest.fixture
def commands(monkeypatch):
  """The binaries `run_seed` starts (none really run: each writes the files it would)."""
  started = []

  def fake_run(command, check):
    assert check
    binary = command[2:command.index(next(a for a in command if a.startswith('--config=')))]
    workdir = next(a for a in command if a.startswith('--workdir=')).split('=', 1)[1]
    started.append(binary)
    results = {'step': 300, 'anomaly': {'auc': 0.8}}
    if '--select_on_validation' in binary:
      results['checkpoint_selection'] = {'on': 'validation', 'selected_step': 300}
    os.makedirs(f'{workdir}/eval', exist_ok=True)
    with open(f'{workdir}/eval/results.json', 'w') as f:
      json.dump(results, f)
    if binary == ['fedgan_jax.main']:
      with open(f'{workdir}/results.json', 'w') as f:
        json.dump({'wall_time_s': 5.0}, f)

  monkeypatch.setattr(protocol_lib.subprocess, 'run', fake_run)
  return started


@pytest.mark.parametrize('select, reevaluate, runs', [
    (False, False, [['fedgan_jax.main'], []]),
    (False, True, [['fedgan_jax.main'], ['fedgan_jax.eval']]),
    (True, False, [['fedgan_jax.main', 'fedgan_jax.eval --select_on_validation'], []]),
    (True, True, [['fedgan_jax.main', 'fedgan_jax.eval --select_on_validation'],
                  ['fedgan_jax.eval --select_on_validation']]),
])
def test_a_seed_trains_once_and_is_evaluated_as_asked(commands, tmp_path, select, reevaluate,
                                                      runs):
  for expected in runs:  # A first call trains; a second finds the seed done.
    commands.clear()
    results = protocol_lib.run_seed(0, str(tmp_path / 'seed_0'), [], 'configs/zhanglab.py',
                                     select, reevaluate)
    assert [' '.join(c) for c in commands] == expected
    assert results['wall_time_s'] == 5.0
    assert ('checkpoint_selection' in results) == select
