"""Client and server optimizers built by name from the config: `dict(name=..., kwargs=...)`.

As big_vision's `optax_name` / `optax`, a spec names an optax optimizer and passes it only the
keyword arguments that optimizer takes; the learning rates sit beside them (`learning_rate`,
or `d_learning_rate` / `g_learning_rate` for a client's two networks). A keyword the named
optimizer does not take is an error naming the optimizer, the key and what it takes, so a
typo (or a leftover of another optimizer after switching `name` on the command line) fails at
start-up instead of being ignored. To switch on the command line, replace the kwargs too:

    --config.fl.client_optimizer.name=sgd "--config.fl.client_optimizer.kwargs={'momentum': 0.9}"

The server treats the weighted average client delta as a negative pseudo-gradient
(Reddi et al. 2021, "Adaptive Federated Optimization"): plain FedAvg is SGD with
learning rate 1 and no momentum, FedAvgM adds server momentum, FedAdam uses Adam, and
`optimistic` is optax's optimistic gradient descent (its `alpha`, `beta`), which damps the
rotation of GAN min-max dynamics.
"""

from __future__ import annotations

from typing import Any, Mapping

import optax

# name -> the keyword arguments it takes (beside the learning rate).
KWARGS = {
    'fedavg': (),
    'sgd': ('momentum', 'nesterov'),
    'adam': ('b1', 'b2', 'eps'),
    'optimistic': ('alpha', 'beta'),
}
OPTIMIZERS = tuple(KWARGS)
_SPEC_FIELDS = ('name', 'kwargs', 'learning_rate', 'd_learning_rate', 'g_learning_rate')


def build_optimizer(spec: Mapping[str, Any], learning_rate: float | None = None,
                    where: str = 'optimizer') -> optax.GradientTransformation:
  """Builds an optax optimizer from `{'name': ..., 'learning_rate': ..., 'kwargs': {...}}`.

  Args:
    spec: config sub-tree with `name`, `kwargs` (may be left out when empty) and
      `learning_rate` (or the learning rate passed in).
    learning_rate: overrides `spec.learning_rate` (clients have one rate for G and one for D).
    where: config path used in error messages.

  Raises:
    ValueError: naming `where`, for an unknown name, field or keyword argument.
  """
  name = spec['name']
  if name not in KWARGS:
    raise ValueError(f'{where}.name: {name!r} is not one of {OPTIMIZERS}.')
  unknown = sorted(set(spec) - set(_SPEC_FIELDS))
  if unknown:
    raise ValueError(f'{where}: unknown field(s) {unknown}; an optimizer\'s own arguments go in '
                     f'{where}.kwargs (e.g. {where}.kwargs.{unknown[0]}).')
  kwargs = dict(spec['kwargs']) if 'kwargs' in spec else {}
  bad = sorted(set(kwargs) - set(KWARGS[name]))
  if bad:
    raise ValueError(f'{where}.kwargs: optimizer {name!r} takes no {bad}; it takes '
                     f'{list(KWARGS[name]) or "no keyword arguments"}.')
  lr = spec['learning_rate'] if learning_rate is None else learning_rate
  if name == 'fedavg':
    return optax.sgd(lr)
  if name == 'sgd':
    # Momentum 0 is plain SGD: no trace in the optimizer state (as 'fedavg').
    kwargs['momentum'] = kwargs.get('momentum') or None
  return {'sgd': optax.sgd, 'adam': optax.adam,
          'optimistic': optax.optimistic_gradient_descent}[name](lr, **kwargs)


def build_client_optimizers(client_spec: Mapping[str, Any]):
  """`(d_optimizer, g_optimizer)`: same kind, separate learning rates (two time-scale rule)."""
  where = 'fl.client_optimizer'
  return (build_optimizer(client_spec, client_spec['d_learning_rate'], where),
          build_optimizer(client_spec, client_spec['g_learning_rate'], where))


def build_server_optimizer(server_spec: Mapping[str, Any]) -> optax.GradientTransformation:
  return build_optimizer(server_spec, where='fl.server_optimizer')
