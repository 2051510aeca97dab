"""Start-up checks: every numeric config field's domain, and the parameters a run may keep.

`validate_config(config)` runs first in every binary's library entry
(`train.train_and_evaluate`, the eval binary, the Flower server and hospitals). It walks
every numeric field of the config (sequences element by element) and checks it against
`DOMAINS`, the first rule whose pattern matches its dotted path; a numeric field no rule
names must at least be finite. A bad value fails before any data is read or any program
is compiled, with a message naming the field and the domain it must lie in, instead of a
`ZeroDivisionError` deep in a model (`fl.batch_size=0`) or a run that "succeeds" with an
untrained generator (`fl.num_rounds=-5`).

`check_params(tree, max_abs, what)` is the check a parameter tree must pass before it is
checkpointed or restored: every value finite and at most `train.max_abs_param` in
magnitude, so a checkpoint can only ever hold parameters a run may go on from.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


class ConfigValueError(ValueError):
  """A config field outside its domain; the message names the field."""


class ParameterCheckError(RuntimeError):
  """Parameters that are NaN/inf or beyond `train.max_abs_param`."""


@dataclasses.dataclass(frozen=True)
class Domain:
  """Where a numeric field's values must lie.

  Attributes:
    integer: values must be whole numbers.
    low, high: bounds (None = unbounded).
    low_open, high_open: exclude the bound itself.
    optional: None is allowed (a placeholder left unset).
  """
  integer: bool = False
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  optional: bool = False

  def describe(self) -> str:
    kind = 'an integer' if self.integer else 'a finite number'
    parts = []
    if self.low is not None:
      parts.append(f'{">" if self.low_open else ">="} {self.low:g}')
    if self.high is not None:
      parts.append(f'{"<" if self.high_open else "<="} {self.high:g}')
    text = kind + (' ' + ' and '.join(parts) if parts else '')
    return text + (' (or None)' if self.optional else '')

  def contains(self, value) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      return False
    value = float(value)
    if not math.isfinite(value) or (self.integer and value != int(value)):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    if self.high is not None and (value >= self.high if self.high_open else value > self.high):
      return False
    return True


def _count(low: int = 0, optional: bool = False) -> Domain:
  return Domain(integer=True, low=low, optional=optional)


_POSITIVE = Domain(low=0, low_open=True)
_NON_NEGATIVE = Domain(low=0)
_UNIT = Domain(low=0, high=1)                         # Probabilities, fractions, quantiles.
_DECAY = Domain(low=0, high=1, high_open=True)        # Momenta, Adam's betas, EMA decay.
_OPEN_UNIT = Domain(low=0, high=1, low_open=True, high_open=True)
_PERCENTILE = Domain(low=0, high=100)
_FINITE = Domain()

# (pattern on the dotted path, domain): the first match wins. Sequence fields (channel lists)
# are checked element by element; list entries (e.g. data.hospitals) appear as `name.INDEX`.
DOMAINS: tuple[tuple[str, Domain], ...] = (
    ('seed', _count()),
    # Federated training.
    ('fl.num_rounds', _count(1)),
    ('fl.clients_per_round', _count()),     # 0 = every client.
    ('fl.local_steps', _count(1)),
    ('fl.batch_size', _count(1)),
    ('runtime.client_threads', _count()),        # 0 = one per core.
    ('fl.generator_ema', _DECAY),           # 0 = off; 1 would never move.
    ('runtime.autotune.rounds', _count(1)),
    ('runtime.autotune.budget_s', _POSITIVE),
    ('runtime.autotune.min_rounds', _count()),
    ('runtime.autotune.clients', _count()),      # 0 = all of the round's.
    ('fl.*_optimizer.*learning_rate', _POSITIVE),
    ('fl.*_optimizer.kwargs.momentum', _DECAY),
    ('fl.*_optimizer.kwargs.b1', _DECAY),
    ('fl.*_optimizer.kwargs.b2', _DECAY),
    ('fl.*_optimizer.kwargs.eps', _POSITIVE),
    ('fl.*_optimizer.kwargs.alpha', _POSITIVE),
    ('fl.*_optimizer.kwargs.beta', _POSITIVE),
    ('loss.*', _NON_NEGATIVE),              # Loss weights.
    # Networks.
    ('model.generator.decoder_channels', _count(1)),
    ('model.discriminator.minibatch_std_group', _count()),   # 0 = off.
    ('model.*', _count(1)),                 # Widths, sizes, shuffle factors.
    ('sampling.noise_scale', _NON_NEGATIVE),  # 0 = every profile's mean image.
    ('checkpoint.every_rounds', _count(1)),
    ('checkpoint.keep', _count(1)),
    ('train.max_abs_loss', _POSITIVE),
    ('train.max_abs_param', _POSITIVE),
    ('train.profiles.*', _FINITE),
    ('conditions.*.std', _POSITIVE),        # Standardization of a continuous condition.
    ('train.*', _count(1)),                 # Logging and sample cadences, grid columns.
    # F-AD and conditioning.
    ('anomaly.learning_rate', _POSITIVE),
    ('anomaly.*percentile', _PERCENTILE),
    ('anomaly.score_blur_sigma', _NON_NEGATIVE),
    ('anomaly.input_size', _count()),       # 0 = the image size.
    ('anomaly.variant.discriminator_block', _count()),  # 0 = D's first residual block.
    ('anomaly.variant.normal_filter_keep', Domain(low=0, high=1, low_open=True)),
    ('anomaly.variant.release_filter_percentile', Domain(low=0, high=100, high_open=True)),
    ('anomaly.variant.score_border', Domain(low=0, high=0.5, high_open=True)),
    ('anomaly.*', _count(1)),
    # Differential privacy.
    ('dp.clip_norm', _POSITIVE),
    ('dp.noise_multiplier', _NON_NEGATIVE),
    ('dp.target_epsilon', Domain(low=0, low_open=True, optional=True)),
    ('dp.max_epsilon', Domain(low=0, low_open=True, optional=True)),
    ('dp.delta', Domain(low=0, high=1, low_open=True, high_open=True, optional=True)),
    ('dp.microbatch_size', _count(1, optional=True)),
    ('dp.adaptive_clip.target_quantile', _UNIT),
    ('dp.adaptive_clip.learning_rate', _NON_NEGATIVE),
    ('dp.adaptive_clip.count_noise_multiplier', Domain(low=0, optional=True)),
    ('audit.hospital', _count()),
    ('audit.holdout_fraction', _OPEN_UNIT),
    ('audit.*', _count(1)),
    # Evaluation.
    ('eval.*learning_rate', _POSITIVE),
    ('eval.personalized.calibration_ridge', _NON_NEGATIVE),
    ('eval.operating_point.site_percentile', Domain(low=0, high=100, low_open=True,
                                                    high_open=True)),
    ('eval.operating_point.specificity', _UNIT),
    ('eval.operating_point.site_confidence', Domain(low=0, high=1, high_open=True)),
    ('eval.operating_point.private_epsilon', Domain(low=0)),
    ('eval.operating_point.private_delta', Domain(low=0, high=1, low_open=True, high_open=True)),
    ('eval.operating_point.private_steps', _count(1)),
    ('eval.memorization_percentile', _PERCENTILE),
    ('eval.*', _count(1)),
    # Cross-silo deployment (fedgan_jax/deploy/settings.py).
    ('deploy.*_s', _POSITIVE),
    ('deploy.max_delta_norm', _POSITIVE),
    ('deploy.min_*', _count()),
    ('deploy.max_message_bytes', _count(1)),
    ('deploy.identify_concurrency', _count(1)),
    # Data sources (configs/data/).
    ('data.image_size', _count(1)),
    ('data.channels', _count(1)),
    ('data.num_hospitals', _count(1)),
    ('data.max_images', _count()),          # 0 = all.
    ('data.max_in_memory_bytes', _count()),
    ('data.max_valid_age', _POSITIVE),
    ('data.*age_max_valid', _POSITIVE),
    ('data.decode_workers', _count()),
    ('data.decode_chunk_size', _count(1)),
    ('data.demographics.patient_id_stride', _count(1)),
    ('data.render_chunk_pixels', _count(1)),
    ('data.test_examples', _count(1)),
    ('data.split.test_fraction', _OPEN_UNIT),
    ('data.partition.alpha', _POSITIVE),
    ('data.partition.num_clients', _count(1)),
    ('data.augment.fill_value', _FINITE),
    ('data.*probability', _UNIT),
    ('data.*fraction', _UNIT),
    ('data.augment.max_*', _NON_NEGATIVE),
    ('data.*_std', _NON_NEGATIVE),
    ('data.*sigma', _NON_NEGATIVE),
    ('data.*_counts', _count()),
    ('data.*_weights', _NON_NEGATIVE),
    ('data.*.examples', _count()),
    ('data.*gamma', _POSITIVE),
)


def domain_of(path: str) -> Domain | None:
  """The domain of the numeric field at dotted `path`, or None (then: finite only)."""
  for pattern, domain in DOMAINS:
    if fnmatch.fnmatchcase(path, pattern):
      return domain
  return None


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_mapping(value) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, dict)) or (
      dataclasses.is_dataclass(value) and not isinstance(value, type))


def numeric_fields(node, prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted path, value) of every numeric or None leaf; sequences of numbers as one field.

  Typed presets (dataclass leaves such as `data.demographics`) are walked like sections.
  """
  if dataclasses.is_dataclass(node) and not isinstance(node, type):
    node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    items = node.items()
  elif isinstance(node, (list, tuple)) and any(_is_mapping(v) for v in node):
    items = ((str(i), v) for i, v in enumerate(node))
  else:
    return
  for key, value in items:
    path = f'{prefix}.{key}' if prefix else str(key)
    if (_is_mapping(value) or isinstance(value, (list, tuple))) and not (
        isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value)):
      yield from numeric_fields(value, path)
    elif value is None or _is_number(value) or isinstance(value, (list, tuple)):
      yield path, value


def validate_config(config) -> None:
  """Raises `ConfigValueError` naming the first numeric field outside its domain."""
  for path, value in numeric_fields(config):
    domain = domain_of(path)
    if domain is None:
      domain = Domain(optional=True)
    values = value if isinstance(value, (list, tuple)) else (value,)
    for i, item in enumerate(values):
      if domain.contains(item):
        continue
      where = path if values is not value else f'{path}[{i}] (of {tuple(value)})'
      raise ConfigValueError(f'config.{where} = {item!r}: expected {domain.describe()}. '
                             f'Fix it in the config file or the --config.{path} override.')


@jax.jit
def _param_stats(tree):
  leaves = jax.tree.leaves(tree)
  finite = jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])
  largest = jnp.stack([jnp.max(jnp.abs(jnp.where(jnp.isfinite(x), x, 0))) for x in leaves])
  return finite, largest


def check_params(tree, max_abs: float, what: str) -> None:
  """Raises `ParameterCheckError` unless every value of `tree` is finite and <= `max_abs`.

  Args:
    tree: a parameter pytree (global arrays must be replicated or fully addressable).
    max_abs: the bound (`train.max_abs_param`).
    what: names the tree in the message, e.g. 'round 3 params'.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if not leaves:
    return
  finite, largest = (np.asarray(a) for a in jax.device_get(_param_stats(tree)))
  for (path, _), ok, biggest in zip(leaves, finite, largest):
    name = jax.tree_util.keystr(path)
    if not ok:
      raise ParameterCheckError(f'{what}: {name} holds NaN or inf.')
    if biggest > max_abs:
      raise ParameterCheckError(f'{what}: max |{name}| = {biggest:.3g} exceeds '
                                f'train.max_abs_param={max_abs:g}.')
