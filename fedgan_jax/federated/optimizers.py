"""Client and server optimizers built by name from the config.

The server treats the weighted average client delta as a negative pseudo-gradient
(Reddi et al. 2021, "Adaptive Federated Optimization"): plain FedAvg is SGD with
learning rate 1 and no momentum, FedAvgM adds server momentum (the default, as the
design asks), FedAdam uses Adam, and `optimistic` is optax's optimistic gradient
descent, which damps the rotation of GAN min-max dynamics.
"""

from __future__ import annotations

from typing import Any, Mapping

import optax

OPTIMIZERS = ('sgd', 'fedavg', 'adam', 'optimistic')


def build_optimizer(spec: Mapping[str, Any], learning_rate: float | None = None,
                    where: str = 'optimizer') -> optax.GradientTransformation:
  """Builds an optax optimizer from `{'name': ..., ...}`.

  Args:
    spec: config sub-tree with `name` and that optimizer's fields (`momentum`,
      `nesterov`, `b1`, `b2`, `eps`, `alpha`, `beta`).
    learning_rate: overrides `spec.learning_rate` (clients have one rate for G and one for D).
    where: config path used in error messages.
  """
  name = spec['name']
  lr = spec['learning_rate'] if learning_rate is None else learning_rate
  if name == 'fedavg':
    return optax.sgd(lr)
  if name == 'sgd':
    momentum = spec.get('momentum', 0.0) or None
    return optax.sgd(lr, momentum=momentum, nesterov=bool(spec.get('nesterov', False)))
  if name == 'adam':
    return optax.adam(lr, b1=spec.get('b1', 0.9), b2=spec.get('b2', 0.999), eps=spec.get('eps', 1e-8))
  if name == 'optimistic':
    return optax.optimistic_gradient_descent(lr, alpha=spec.get('alpha', 1.0),
                                             beta=spec.get('beta', 1.0))
  raise ValueError(f'{where}.name: {name!r} is not one of {OPTIMIZERS}.')


def build_client_optimizers(client_spec: Mapping[str, Any]):
  """`(d_optimizer, g_optimizer)`: same kind, separate learning rates (two time-scale rule)."""
  where = 'fl.client_optimizer'
  return (build_optimizer(client_spec, client_spec['d_learning_rate'], where),
          build_optimizer(client_spec, client_spec['g_learning_rate'], where))


def build_server_optimizer(server_spec: Mapping[str, Any]) -> optax.GradientTransformation:
  return build_optimizer(server_spec, where='fl.server_optimizer')
