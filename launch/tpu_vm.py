"""Runs fedgan_jax on a Cloud TPU VM (one host, e.g. v4-8, or a pod slice, e.g. v4-32).

    python -m launch.tpu_vm all --name=fedgan-v4 --zone=us-central2-b \
        --accelerator-type=v4-8 --config=configs/phantom.py --dry-run \
        -- --config.fl.num_rounds=100

Subcommands: create, setup (copy or clone the code, make a Python 3.11 venv, `pip install -e .`
and `pip install "jax[tpu]"` on every worker), run (`fedgan_jax.main` on every worker, with
`--jax_distributed` on pod slices), fetch (the workdir from worker 0), delete, and all (the
sequence; it deletes the VM at the end even after a failure, unless --keep). With --dry-run the
gcloud commands are printed, one per line, and nothing is run.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Sequence

if __package__ in (None, ''):  # Run as `python launch/tpu_vm.py`: make `launch` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from launch import common  # pylint: disable=wrong-import-position

_ACCELERATOR_PATTERN = re.compile(r'^(v\d+[a-z]*|v5litepod)-(\d+)$')
# The largest slice that fits one host (4 chips or 8 TensorCores in every generation's naming);
# anything larger is a pod slice with several workers.
MAX_SINGLE_HOST_SIZE = 8
# Runtime images recommended for JAX, by TPU generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5e': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}


def parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
  """'v4-32' -> ('v4', 32); raises ValueError naming --accelerator-type otherwise."""
  match = _ACCELERATOR_PATTERN.match(accelerator_type)
  if not match:
    raise ValueError(f'--accelerator-type: expected <generation>-<size> such as v4-8, v4-32, '
                     f'v5litepod-8 or v6e-8, got {accelerator_type!r}.')
  return match.group(1), int(match.group(2))


def is_pod_slice(accelerator_type: str) -> bool:
  """True when the slice spans several hosts, so every command must run on every worker."""
  return parse_accelerator_type(accelerator_type)[1] > MAX_SINGLE_HOST_SIZE


def default_runtime_version(accelerator_type: str) -> str:
  generation = parse_accelerator_type(accelerator_type)[0]
  if generation not in RUNTIME_VERSIONS:
    raise ValueError(f'--version: no default runtime for {accelerator_type!r}; pass one, e.g. '
                     '--version=tpu-ubuntu2204-base.')
  return RUNTIME_VERSIONS[generation]


def _gcloud(verb: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb]


def build_plan(args: argparse.Namespace) -> dict[str, list[common.Step]]:
  """Every phase's gcloud commands for the parsed arguments."""
  location = common.gcloud_location_flags(args)
  # Single host: gcloud's default worker 0 is the only one. Pod slice: all of them.
  workers = ['--worker=all'] if args.multi_host else []
  retry = dict(attempts=args.ssh_attempts, retry_wait_s=args.ssh_retry_wait_s)

  def ssh(*commands: Sequence[str]) -> list[str]:
    return [*_gcloud('ssh'), args.name, *location, *workers,
            f'--command={common.remote_script(*commands)}']

  create = [*_gcloud('create'), args.name, *location, f'--accelerator-type={args.accelerator_type}',
            f'--version={args.version}']
  if args.spot:
    create.append('--spot')

  setup = []
  archive_name = None
  if not args.repo_url:
    archive = common.archive_path(args.name)
    archive_name = pathlib.PurePath(archive).name
    setup += [
        common.make_step(f'pack the committed HEAD of {args.repo_dir} (uncommitted edits are not '
                         'included)', common.archive_command(args.repo_dir, archive)),
        common.make_step('copy the code to the VM',
                         [*_gcloud('scp'), archive, f'{args.name}:{archive_name}', *location,
                          *workers], **retry),
    ]
  python = common.REMOTE_PYTHON
  jax_install = [[python, '-m', 'pip', 'install', '-e', '.'],
                 [python, '-m', 'pip', 'install', args.jax_package]]
  setup.append(common.make_step(
      'install the project and JAX on every worker',
      ssh(*common.source_commands(args, archive_name), ['cd', args.remote_dir],
          *common.install_commands(args, jax_install)), **retry))

  main = common.main_command(args.config or '', args.workdir, args.overrides,
                             jax_distributed=args.multi_host)
  run = [common.make_step('train on every worker' if args.multi_host else 'train',
                          ssh(['cd', args.remote_dir], main), fail_fast=True)]

  fetch = common.fetch_steps(args, lambda remote: [*_gcloud('scp'), '--recurse',
                                                   f'{args.name}:{remote}', args.local_dir,
                                                   *location, '--worker=0'])
  delete = [common.make_step('delete the TPU VM',
                             [*_gcloud('delete'), args.name, *location, '--quiet'])]
  return {'create': [common.make_step('create the TPU VM', create)], 'setup': setup, 'run': run,
          'fetch': fetch, 'delete': delete}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  own, trailing = common.split_trailing_overrides(argv)
  parser = argparse.ArgumentParser(prog='python -m launch.tpu_vm',
                                   description=__doc__.split('\n\n')[0])
  subparsers = parser.add_subparsers(dest='command', required=True)
  for name in common.SUBCOMMANDS:
    sub = subparsers.add_parser(name)
    common.add_common_arguments(sub)
    sub.add_argument('--accelerator-type', default='v4-8',
                     help='e.g. v4-8, v5litepod-8 (one host), v4-32 (pod slice).')
    sub.add_argument('--version', help='TPU runtime; default by generation (v4: '
                     'tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite, ...).')
    sub.add_argument('--multi-host', action=argparse.BooleanOptionalAction, default=None,
                     help='Run on every worker with --jax_distributed; default: size > 8.')
    sub.add_argument('--jax-package', default='jax[tpu]',
                     help='pip requirement for JAX on the VM, e.g. "jax[tpu]==0.10.2".')
  args = parser.parse_args(own)
  args = common.finish_arguments(parser, args, trailing)
  try:
    if args.multi_host is None:
      args.multi_host = is_pod_slice(args.accelerator_type)
    else:
      parse_accelerator_type(args.accelerator_type)
    args.version = args.version or default_runtime_version(args.accelerator_type)
  except ValueError as error:
    parser.error(str(error))
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  runner = common.Runner(dry_run=args.dry_run)
  keep_hint = (f'Delete it with: python -m launch.tpu_vm delete --name={args.name} '
               f'--zone={args.zone}' + (f' --project={args.project}' if args.project else ''))
  return common.execute(runner, build_plan(args), args.command, args.keep, keep_hint,
                        common.workdir_warnings(args, multi_host=args.multi_host))


if __name__ == '__main__':
  sys.exit(main())
