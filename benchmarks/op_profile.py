"""Where a CPU round's time goes, per XLA op class: convolutions by shape, dots, elementwise.

    python -m benchmarks.op_profile --clients=4 --execution=threads+ynn --json=/tmp/ops.json

Runs the phantom default's round (`round_lib`, one warm-up round), then `--rounds` rounds under
`jax.profiler.trace` (a Perfetto trace, read back here; no TensorBoard needed). XLA's CPU runtime
marks every op it runs with its HLO name (`hlo_op`); the client program's optimized HLO (compiled
here with the same options) says what each is: a fusion holding a convolution counts as that
convolution (keyed by input, kernel and output shapes), one holding a dot as a dot, other
fusions and plain ops as elementwise / reduction / data movement. The report: seconds and share of
the summed op time per class and per convolution shape, and `busy`: summed op time over
(wall time x cores), so `1 - busy` is what the cores spent outside XLA ops (host dispatch,
Python, waiting).
"""

import collections
import functools
import glob
import gzip
import json
import os
import re
import tempfile
import time

from absl import app
from absl import flags
import jax

from benchmarks import round_lib
from fedgan_jax import cpu_backend
from fedgan_jax.federated import autotune
from fedgan_jax.federated import execution as execution_lib

_CLIENTS = flags.DEFINE_integer('clients', 4, 'Clients per round (all take part).')
_EXECUTION = flags.DEFINE_string('execution', 'threads', 'An engine execution name.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Profiled rounds.')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 32, 'Phantom images per hospital.')
_TOP = flags.DEFINE_integer('top', 12, 'Convolution shapes listed.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results (empty: stdout only).')

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')


def parse_hlo(text: str):
  """`{computation: [(name, shape, opcode, rest)]}` of an HLO module's text."""
  computations, current = {}, None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and ' = ' not in line:
      current = computations.setdefault(header.group(1), [])
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      current.append(match.groups())
  return computations


def op_classes(text: str) -> dict[str, str]:
  """HLO instruction name -> its class ('conv in[...] k[...] -> out[...]', 'dot', ...)."""
  computations = parse_hlo(text)
  shapes = {name: shape for instructions in computations.values()
            for name, shape, _, _ in instructions}

  def classify(opcode, rest, depth=0):
    if opcode == 'convolution':
      operands = re.findall(r'%([\w.\-]+)', rest.split(')')[0])[:2]
      return 'conv ' + ' * '.join(shapes.get(o, '?') for o in operands)
    if opcode == 'dot':
      return 'dot'
    if opcode == 'fusion' and depth < 3:
      called = re.search(r'calls=%?([\w.\-]+)', rest)
      inner = [classify(op, r, depth + 1) for _, _, op, r in
               computations.get(called.group(1), [])] if called else []
      for kind in ('conv', 'dot', 'reduction'):
        found = [c for c in inner if c.startswith(kind)]
        if found:
          return found[0]
      return 'elementwise fusion'
    if opcode in ('reduce', 'reduce-window', 'select-and-scatter'):
      return 'reduction'
    if opcode in ('copy', 'transpose', 'concatenate', 'slice', 'dynamic-slice', 'pad',
                  'dynamic-update-slice', 'broadcast', 'reshape', 'bitcast'):
      return 'data movement'
    return 'other ' + opcode

  classes = {}
  for instructions in computations.values():
    for name, shape, opcode, rest in instructions:
      label = classify(opcode, rest)
      if label.startswith('conv'):
        label = f'{label} -> {shape}'
      classes[name] = label
  return classes


def profile_round(setup, execution: str, clients: int, rounds: int):
  """`(op events [(module, op, seconds)], wall seconds)` of `rounds` profiled rounds."""
  round_fn, chosen, _ = round_lib.make_round(setup, execution, clients)
  state = round_lib.place_state(chosen, setup.state)
  inputs = [setup.round_inputs(r, clients) for r in range(rounds + 1)]
  state, _ = round_lib.block(round_fn(state, *inputs[0], setup.rng(0)))
  directory = tempfile.mkdtemp(prefix='op_profile_')
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    started = time.perf_counter()
    for r in range(1, rounds + 1):
      state, _ = round_lib.block(round_fn(state, *inputs[r], setup.rng(r)))
    wall = time.perf_counter() - started
  path = sorted(glob.glob(os.path.join(directory, '**', 'perfetto_trace.json.gz'),
                          recursive=True))[-1]
  with gzip.open(path) as handle:
    trace = json.load(handle)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  ops = [(e['args'].get('hlo_module', ''), e['args']['hlo_op'], e.get('dur', 0) / 1e6)
         for e in events if e.get('ph') == 'X' and 'hlo_op' in (e.get('args') or {})]
  return ops, wall


def client_program_hlo(setup, execution: str, clients: int) -> str:
  """The optimized HLO of one client's fused `local_update`, compiled as the round does."""
  chosen = autotune.Execution.from_name(execution)
  batches, _, ids = setup.round_inputs(0, clients)
  jitted = jax.jit(functools.partial(execution_lib.local_update, setup.task),
                   compiler_options=cpu_backend.client_compiler_options(chosen.ynn_fusions))
  one = jax.tree.map(lambda x: x[0], batches)
  return jitted.lower(setup.state.params, one, setup.rng(0)).compile().as_text()


def main(argv):
  del argv
  load_before = round_lib.load_average()
  setup = round_lib.Setup(round_lib.benchmark_config(_CLIENTS.value, _EXAMPLES.value))
  classes = op_classes(client_program_hlo(setup, _EXECUTION.value, _CLIENTS.value))
  ops, wall = profile_round(setup, _EXECUTION.value, _CLIENTS.value, _ROUNDS.value)
  by_class, by_conv = collections.Counter(), collections.Counter()
  for module, op, seconds in ops:
    label = classes.get(op, 'other ' + op.split('.')[0]) if 'local_update' in module else (
        'server programs')
    by_class['convolution' if label.startswith('conv') else label] += seconds
    if label.startswith('conv'):
      by_conv[label] += seconds
  total = sum(by_class.values())
  cores = len(os.sched_getaffinity(0))
  share = lambda counter, top=None: [
      {'class': k, 's': round(v, 3), 'share': round(v / total, 4)}
      for k, v in counter.most_common(top)]
  report = {'execution': _EXECUTION.value, 'clients': _CLIENTS.value, 'rounds': _ROUNDS.value,
            'wall_s': round(wall, 3), 'op_s': round(total, 3), 'cores': cores,
            'busy': round(total / (wall * cores), 4), 'by_class': share(by_class),
            'convolutions': share(by_conv, _TOP.value),
            'machine': dict(round_lib.machine_info(), load_average_before=load_before)}
  round_lib.print_report(report, _JSON.value)


if __name__ == '__main__':
  app.run(main)
