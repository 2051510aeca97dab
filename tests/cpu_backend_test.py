"""Tests for fedgan_jax.cpu_backend: the XLA CPU flag the binaries set before JAX starts."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedgan_jax import cpu_backend

FLAG = f'--{cpu_backend.YNN_FLAG}='


@pytest.fixture
def fresh_process(monkeypatch):
  """A process whose backends have not started and whose jaxlib knows the flag."""
  monkeypatch.setattr(cpu_backend, 'backends_started', lambda: False)
  monkeypatch.setattr(cpu_backend, 'jaxlib_knows_flag', lambda name: True)


def test_apply_appends_the_flag_to_existing_xla_flags(fresh_process, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
  assert cpu_backend.apply(False) == 'off'
  assert os.environ['XLA_FLAGS'] == f'--xla_dump_to=/tmp/x {FLAG}'


def test_apply_sets_the_flag_when_xla_flags_is_unset(fresh_process, monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert cpu_backend.apply(False) == 'off'
  assert os.environ['XLA_FLAGS'] == FLAG


@pytest.mark.parametrize('ynn_fusions, xla_flags, outcome', [
    (True, '', 'kept (--cpu_ynn_fusions)'),
    (False, f'--{cpu_backend.YNN_FLAG}=dot', 'left to XLA_FLAGS'),
])
def test_apply_leaves_xla_flags_alone_when_asked_or_set_by_the_user(fresh_process, monkeypatch,
                                                                    ynn_fusions, xla_flags,
                                                                    outcome):
  monkeypatch.setenv('XLA_FLAGS', xla_flags)
  assert cpu_backend.apply(ynn_fusions) == outcome
  assert os.environ['XLA_FLAGS'] == xla_flags


def test_apply_never_sets_a_flag_this_jaxlib_would_abort_on(monkeypatch):
  monkeypatch.setattr(cpu_backend, 'backends_started', lambda: False)
  monkeypatch.setattr(cpu_backend, 'jaxlib_knows_flag', lambda name: False)
  monkeypatch.setenv('XLA_FLAGS', '')
  assert cpu_backend.apply(False) == 'not known to this jaxlib'
  assert os.environ['XLA_FLAGS'] == ''


def test_apply_after_the_backends_started_changes_nothing(monkeypatch):
  jnp.zeros(1).block_until_ready()  # This process's backends are running now.
  monkeypatch.setenv('XLA_FLAGS', '')
  assert cpu_backend.apply(False) == 'too late: backends already started'
  assert os.environ['XLA_FLAGS'] == ''


def test_jaxlib_flag_lookup():
  assert cpu_backend.jaxlib_knows_flag('xla_dump_to')
  assert not cpu_backend.jaxlib_knows_flag('xla_cpu_no_such_flag_for_fedgan_tests')


def test_convolution_under_the_flag_matches_the_default():
  """A fresh process with apply(False) starts (no abort) and convolves as this one does."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  script = (
      'import json, sys, numpy as np\n'
      'from fedgan_jax import cpu_backend\n'
      'outcome = cpu_backend.apply(False)\n'
      'import jax\n'
      'x, k = (np.array(a, np.float32) for a in json.loads(sys.stdin.read()))\n'
      "y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', "
      "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
      "print(json.dumps({'outcome': outcome, 'y': np.asarray(y).tolist()}))\n")
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  result = subprocess.run([sys.executable, '-c', script], input=json.dumps(
      [images.tolist(), kernel.tolist()]), capture_output=True, text=True, env=env, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['outcome'] in ('off', 'not known to this jaxlib')
  expected = jax.lax.conv_general_dilated(images, kernel, (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(np.array(report['y']), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('ynn_fusions, backend, xla_flags, knows, expected', [
    (False, 'cpu', '', True, {cpu_backend.YNN_FLAG: ''}),
    (True, 'cpu', '', True, None),                      # Asked to keep jaxlib's default.
    (False, 'gpu', '', True, None),                     # Only XLA:CPU has the option.
    (False, 'cpu', f'--{cpu_backend.YNN_FLAG}=', True, None),  # The user's XLA_FLAGS win.
    (False, 'cpu', '', False, None),                    # XLA would reject an unknown option.
])
def test_client_compiler_options(monkeypatch, ynn_fusions, backend, xla_flags, knows, expected):
  monkeypatch.setattr(cpu_backend, 'jaxlib_knows_flag', lambda name: knows)
  monkeypatch.setenv('XLA_FLAGS', xla_flags)
  assert cpu_backend.client_compiler_options(ynn_fusions, backend) == expected


@pytest.mark.skipif(not cpu_backend.jaxlib_knows_flag(cpu_backend.YNN_FLAG),
                    reason='this jaxlib has no YNNPACK fusion option')
def test_program_compiled_with_the_client_options_matches_the_default(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')
  options = cpu_backend.client_compiler_options(False, 'cpu')
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 8))
  conv = lambda x, k: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(jax.jit(conv, compiler_options=options)(images, kernel),
                             jax.jit(conv)(images, kernel), rtol=1e-5, atol=1e-5)
