"""A consortium rehearsed on one machine: the runlocal phantom with the smallest networks.

What the Flower test (`tests/deploy_test.py`) and the fault soak (`benchmarks/soak.py`)
start, every process loading the same file:

    python -m fedgan_jax.deploy.server --config=configs/deploy_smoke.py --workdir=... --insecure
    python -m fedgan_jax.main --config=configs/deploy_smoke.py:soak --config.fl.num_rounds=6 ...

Variants: `soak` checkpoints every round (the soak kills processes between any two), waits
longer (its processes start under load) and stops a round on any failed hospital
(`deploy.accept_failures=False`: every applied round has all replies), unless `tolerant`
(the soak's rogue phase) lets the round go on without it, as the deployment default does.
"""

from configs import phantom
from configs import variant
from fedgan_jax.deploy import settings


def get_config(arg=None):
  options = variant.parse(arg, 'configs/deploy_smoke.py', flags=('soak', 'tolerant'))
  config = phantom.get_config('runlocal')
  # The smallest valid networks: 4 processes compile the client step on 2 shared cores.
  config.model.generator.update(seed_size=16, encoder_channels=(8,), decoder_channels=())
  config.model.discriminator.channels = (8,)
  config.deploy = settings.get_deploy_config()
  # Hospitals start with the server and poll for it every 0.1 s, not every second.
  config.deploy.update(hospital_max_wait_s=60.0, hospital_poll_s=0.1, connect_timeout_s=60.0,
                       round_timeout_s=60.0)
  if options['soak']:
    config.checkpoint.every_rounds = 1
    config.deploy.update(hospital_max_wait_s=90.0, connect_timeout_s=90.0,
                         identify_timeout_s=30.0, accept_failures=options['tolerant'])
  return config
