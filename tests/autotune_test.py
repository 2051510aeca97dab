"""Tests for federated/autotune.py: choosing and caching the fastest execution.

The timing loop runs on an injected clock, and each fake candidate advances it by its own
round time, so the tests know which is fastest. The last test runs the engine's real
candidates once on the runlocal phantom with tiny networks (one candidate, within a tiny
budget) and then hits the cache.
"""

import dataclasses
import json
import math

import pytest

from fedgan_jax.federated import autotune

from conftest import with_tiny_model


class FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def fake_runs(clock, round_s, compile_s=10.0, calls=None):
  """Candidates whose first call takes `compile_s` and every later one `round_s[name]`."""
  calls = {} if calls is None else calls

  def run(name, round_index):
    calls[name] = calls.get(name, 0) + 1
    clock.now += compile_s if calls[name] == 1 else round_s[name]
  return {name: (lambda r, name=name: run(name, r)) for name in round_s}


def test_measure_picks_the_fastest_and_interleaves():
  clock = FakeClock()
  calls = {}
  timings = autotune.measure(fake_runs(clock, {'a': 3.0, 'b': 1.0, 'c': 2.0}, calls=calls),
                             rounds=3, clock=clock)
  assert autotune.fastest(timings) == 'b'
  assert timings['b'].times_s == [1.0, 1.0, 1.0] and timings['b'].first_s == 10.0
  assert calls == {'a': 4, 'b': 4, 'c': 4}


def test_budget_skips_candidates_not_started_but_measures_the_first():
  clock = FakeClock()
  calls = {}
  timings = autotune.measure(fake_runs(clock, {'a': 3.0, 'b': 1.0}, calls=calls), rounds=5,
                             clock=clock, budget_s=5.0)
  assert list(timings) == ['a'] and calls == {'a': 2}  # Compile, then one timed round.


def test_decide_caches_and_a_cache_hit_runs_nothing(tmp_path):
  path = str(tmp_path / 'decisions.json')
  clock = FakeClock()
  first = autotune.decide('key1', fake_runs(clock, {'threads': 2.0, 'threads+ynn': 1.5}),
                          path, rounds=2, clock=clock, facts={'backend': 'cpu'})
  assert (first.choice, first.cached) == ('threads+ynn', False)
  assert first.cost_s == pytest.approx(2 * 10.0 + 2 * 2.0 + 2 * 1.5)
  assert 'threads+ynn 1.5 s' in first.describe()

  def must_not_run(_):
    raise AssertionError('a cache hit ran a candidate')
  second = autotune.decide('key1', {'threads': must_not_run, 'threads+ynn': must_not_run},
                           path, rounds=2, clock=FakeClock())
  assert (second.choice, second.cached, second.cost_s) == ('threads+ynn', True, 0.0)
  assert second.round_s == first.round_s
  stored = json.loads((tmp_path / 'decisions.json').read_text())
  assert stored['decisions']['key1']['facts'] == {'backend': 'cpu'}


def test_another_key_or_a_vanished_choice_measures_again(tmp_path):
  path = str(tmp_path / 'decisions.json')
  autotune.decide('key1', fake_runs(FakeClock(), {'a': 1.0, 'b': 2.0}), path, rounds=1,
                  clock=FakeClock())
  clock = FakeClock()
  assert not autotune.decide('key2', fake_runs(clock, {'a': 2.0, 'b': 1.0}), path, rounds=1,
                             clock=clock).cached
  clock = FakeClock()
  again = autotune.decide('key1', fake_runs(clock, {'b': 2.0, 'c': 1.0}), path, rounds=1,
                          clock=clock)
  assert (again.choice, again.cached) == ('c', False)
  assert set(json.loads((tmp_path / 'decisions.json').read_text())['decisions']) == {
      'key1', 'key2'}


@pytest.mark.parametrize('content', ['{not json', '[]', '{"version": 99, "decisions": {}}',
                                     '{"version": 1, "decisions": []}'])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tmp_path, content, caplog):
  path = tmp_path / 'decisions.json'
  path.write_text(content)
  clock = FakeClock()
  with caplog.at_level('WARNING'):
    decision = autotune.decide('key', fake_runs(clock, {'a': 1.0}), str(path), rounds=1,
                               clock=clock)
  assert not decision.cached
  assert 'unreadable decision cache' in caplog.text
  assert json.loads(path.read_text())['decisions']['key']['choice'] == 'a'  # Rewritten.


def test_a_decision_cut_short_by_the_budget_is_not_cached(tmp_path):
  path = str(tmp_path / 'decisions.json')
  clock = FakeClock()
  decision = autotune.decide('key', fake_runs(clock, {'a': 2.0, 'b': 1.0}), path, rounds=2,
                             budget_s=5.0, clock=clock)
  assert (decision.choice, decision.unmeasured) == ('a', ('b',))
  assert 'measures again' in decision.describe()
  assert not (tmp_path / 'decisions.json').exists()


def test_no_cache_path_measures_every_time():
  clock = FakeClock()
  for _ in range(2):
    assert not autotune.decide('k', fake_runs(clock, {'a': 1.0}), None, 1, clock=clock).cached


def test_cache_key_changes_with_shapes_and_versions():
  facts = {'jax': '0.10.2', 'jaxlib': '0.10.2', 'backend': 'cpu',
           'params': ['float32[3, 3, 1, 32]'], 'inputs': ['float32[4, 2, 16, 32, 32, 1]']}
  key = autotune.cache_key(facts)
  assert autotune.cache_key(dict(facts)) == key
  assert autotune.cache_key(dict(facts, jaxlib='0.11.0')) != key
  assert autotune.cache_key(dict(facts, inputs=['float32[4, 2, 8, 32, 32, 1]'])) != key
  assert autotune.cache_key(dict(facts, backend='gpu')) != key


def test_execution_names_round_trip():
  for name in ('threads', 'threads+ynn', 'sequential+unfused', 'threads+ynn+unfused', 'vmap'):
    assert autotune.Execution.from_name(name).name == name
  assert autotune.Execution.from_name('threads+ynn', 3) == autotune.Execution('threads', 3,
                                                                               True, True)
  with pytest.raises(ValueError, match='suffix'):
    autotune.Execution.from_name('threads+fast')


def test_candidates_per_backend():
  names = lambda *args, **kwargs: [c.name for c in autotune.candidates(*args, **kwargs)]
  assert names('cpu', 4) == ['threads', 'sequential', 'threads+ynn', 'threads+unfused']
  assert names('cpu', 4, ynn_available=False) == ['threads', 'sequential', 'threads+unfused']
  assert names('cpu', 1) == ['sequential', 'sequential+ynn', 'sequential+unfused']
  assert names('gpu', 32) == ['vmap', 'sequential']
  assert names('cpu', 4, process_count=2) == ['vmap']


def test_timing_of_nothing_is_infinite():
  assert autotune.Timing(1.0, []).round_s == math.inf


def test_choose_execution_respects_a_forced_choice(runlocal_config):
  from fedgan_jax.federated import server as server_lib  # pylint: disable=g-import-not-at-top
  config = runlocal_config.copy_and_resolve_references()
  config.runtime.strategy = 'sequential'
  config.runtime.ynn_fusions = True
  chosen = server_lib.choose_execution(config, None, None, None, rounds_to_run=10 ** 6)
  assert chosen.execution == autotune.Execution('sequential', 0, True, True)
  assert chosen.round_fn is None and 'runtime.strategy' in chosen.note


def test_choose_execution_measures_once_then_reuses(tmp_path):
  from configs import phantom  # pylint: disable=g-import-not-at-top
  from fedgan_jax.data import registry  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import rngs  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import sampling  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import server as server_lib  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top
  # `TINY_MODEL`'s networks: what is checked is which execution is chosen, built, cached and
  # reused, not its speed; the compile of the candidate's client update shrinks with them.
  config = with_tiny_model(phantom.get_config('runlocal'))
  federation = registry.load_federation(config)
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  config.runtime.strategy = 'auto'
  config.runtime.autotune = dataclasses.replace(
      config.runtime.autotune, min_rounds=2, rounds=1, budget_s=1e-6,
      cache=str(tmp_path / 'decisions.json'))
  server = server_lib.build(config, task, federation.image_shape, federation.schema.model_dim)
  clients = federation.clients
  inputs = sampling.round_inputs(clients, list(range(len(clients))), config.seed, 0,
                                 config.fl.local_steps, config.fl.batch_size)
  choose = lambda rounds: server_lib.choose_execution(
      config, task, server, lambda: (inputs, rngs.round_key(config.seed, 0)), rounds)
  short = choose(1)  # Fewer rounds than autotune_min_rounds: the backend default.
  assert short.execution.strategy == 'threads' and 'not measured' in short.note
  # The tiny budget lets only the first candidate run; its round function is handed over,
  # and the partial decision is not cached.
  first = choose(10)
  assert first.execution.name == 'threads' and first.round_fn is not None
  assert 'measured in' in first.note and 'measures again' in first.note
  assert not (tmp_path / 'decisions.json').exists()
  # A complete decision of the same key (as a run with the budget to time them all stores)
  # is reused: nothing is built or run.
  key = autotune.cache_key(dict(
      autotune.platform_facts(),
      candidates=[c.name for c in autotune.candidates('cpu', len(clients))],
      **server_lib.program_facts(config, server.state.params, inputs)))
  autotune.store_decision(config.runtime.autotune.cache, key, {
      'choice': 'sequential', 'round_s': {'sequential': 1.0, 'threads': 2.0},
      'measured_at': 'then'})
  second = choose(10)
  assert second.execution.name == 'sequential' and second.round_fn is None
  assert 'cached decision of then' in second.note
