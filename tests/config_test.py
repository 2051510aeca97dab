"""Every config file and variant builds and validates; the phantom default stays readable.

The leaf count walks the ConfigDict: a nested ConfigDict is walked, anything else (a number,
a string, a list or tuple even of dicts, a typed preset such as `data.demographics`) is one
leaf. flax's imagenet example has ~14; issue 19 caps the phantom default at 100.
"""

import importlib
import pathlib

import ml_collections
import pytest

from configs import variant
from fedgan_jax import validation
from fedgan_jax.federated import optimizers

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
# Every experiment config file and the variants its docstring names.
VARIANTS = {
    'phantom': (None, 'runlocal', 'centralized', 'runlocal,centralized'),
    'phantom_dp': (None, 'runlocal', 'client', 'runlocal,client', 'client,adaptive',
                   'runlocal,client,adaptive'),
    'cxr14': (None, 'runlocal', 'centralized', 'size=128', 'size=256', 'runlocal,size=64'),
    'cxr14_dp': (None, 'runlocal', 'client', 'runlocal,client,size=64'),
    'pneumoniamnist': (None, 'runlocal', 'centralized', 'size=28', 'size=64',
                       'runlocal,size=32'),
    'zhanglab': (None, 'runlocal', 'centralized', 'size=128', 'size=224'),
    'deploy_smoke': (None, 'soak', 'tolerant', 'soak,tolerant'),
}


def leaves(config: ml_collections.ConfigDict, prefix: str = ''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def test_every_experiment_config_file_is_listed():
  files = {p.stem for p in CONFIG_DIR.glob('*.py')
           if 'def get_config(' in p.read_text()}
  assert files == set(VARIANTS)


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_and_variant_builds_and_validates(name, arg):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  validation.validate_config(config)
  optimizers.build_client_optimizers(config.fl.client_optimizer)
  optimizers.build_server_optimizer(config.fl.server_optimizer)
  assert set(config.runtime) == {'strategy', 'client_threads', 'fuse_local_steps', 'ynn_fusions',
                                 'autotune', 'precision'}


def test_phantom_default_has_at_most_100_leaf_fields():
  from configs import phantom  # pylint: disable=g-import-not-at-top
  names = list(leaves(phantom.get_config()))
  assert len(names) <= 100, f'{len(names)} leaf fields: {names}'


def test_phantom_configs_are_fresh_per_call():
  from configs import phantom  # pylint: disable=g-import-not-at-top
  first = phantom.get_config()
  first.data.demographics.bmi_mean = 99.0
  first.data.hospitals[0].examples = 1
  second = phantom.get_config()
  assert second.data.demographics.bmi_mean == 27.0
  assert second.data.hospitals[0].examples == 1200


def test_validation_reaches_into_typed_presets():
  from configs import phantom  # pylint: disable=g-import-not-at-top
  config = phantom.get_config('runlocal')
  config.data.demographics.smoker_probability = 1.5
  with pytest.raises(validation.ConfigValueError, match='data.demographics.smoker_probability'):
    validation.validate_config(config)
  config = phantom.get_config('runlocal')
  config.eval.domain_features.steps = 0
  with pytest.raises(validation.ConfigValueError, match='eval.domain_features.steps'):
    validation.validate_config(config)


def test_variant_parse_is_typed_and_names_the_problem():
  values = {'size': (int, (32, 64))}
  assert variant.parse('runlocal,size=64', 'x.py', ('runlocal', 'client'), values) == {
      'runlocal': True, 'client': False, 'size': 64}
  assert variant.parse(None, 'x.py', ('runlocal',), values) == {'runlocal': False, 'size': None}
  assert variant.format({'runlocal': True, 'client': False, 'size': 64}) == 'runlocal,size=64'
  assert variant.format({'runlocal': False, 'size': None}) is None
  for arg, message in [('clinet', "unknown option 'clinet' (did you mean 'client'?)"),
                       ('size=x', 'size=x is not a int'), ('size=48', 'not one of [32, 64]'),
                       ('size', "option 'size' needs a value"),
                       ('client=1', "option 'client=1' takes no value"),
                       ('client,client', "'client' given twice")]:
    with pytest.raises(ValueError, match='x.py') as error:
      variant.parse(arg, 'x.py', ('runlocal', 'client'), values)
    assert message in str(error.value)
