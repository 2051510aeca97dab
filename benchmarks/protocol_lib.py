"""One seed of the real-data protocol (`benchmarks/real_protocol.py`): which binaries run.

Kept apart from the script's absl flags so it can be imported beside the binaries (whose
`--config` is another flag of the same name).
"""

import json
import os
import subprocess
import sys
import time


def run_seed(seed: int, workdir: str, extra: list[str], config: str, select: bool = False,
             reevaluate: bool = False) -> dict:
  """Trains and evaluates seed `seed` unless done; `reevaluate` evaluates its checkpoint again
  with the config as it is now (the detector or evaluators changed, G did not); `select`
  evaluates the round chosen on the validation split (once, or again with `reevaluate`)."""
  commands = []
  if not os.path.exists(os.path.join(workdir, 'results.json')):
    commands.append(['fedgan_jax.main'])
  if select:
    # main evaluates its last round; the chosen one is evaluated after it, once.
    if commands or reevaluate or not _was_selected(workdir):
      commands.append(['fedgan_jax.eval', '--select_on_validation'])
  elif reevaluate and not commands:
    commands.append(['fedgan_jax.eval'])
  for command in commands:
    started = time.time()
    subprocess.run([sys.executable, '-m', *command, f'--config={config}',
                    f'--workdir={workdir}', f'--config.seed={seed}', *extra], check=True)
    print(f'seed {seed}: {" ".join(command)} {time.time() - started:.0f} s', flush=True)
  # eval/ holds the latest evaluation of the checkpoint (main's own, or the eval binary's).
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(workdir, 'results.json')) as f:
    results['wall_time_s'] = json.load(f).get('wall_time_s')
  return results


def _was_selected(workdir: str) -> bool:
  path = os.path.join(workdir, 'eval', 'results.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return 'checkpoint_selection' in json.load(f)
