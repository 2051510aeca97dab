"""Runs fedgan_jax on Compute Engine GPU VMs (one VM, or --num-hosts VMs as one JAX job).

    python -m launch.gpu_vm all --name=fedgan-h100 --zone=us-central1-a --gpu-count=8 \
        --config=configs/phantom.py --dry-run -- --config.fl.num_rounds=100

Subcommands: create (`gcloud compute instances create` from a Deep Learning VM image, with
`--accelerator=type=...,count=N` and `--maintenance-policy=TERMINATE`, which GPU VMs require),
setup (copy or clone the code, make a Python 3.11 venv, `pip install -e . "jax[cuda12]"`), run
(`fedgan_jax.main` over `gcloud compute ssh`; with several hosts, on all of them at once with
`--jax_distributed` and JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set per host),
fetch (the workdir from host 0 with `gcloud compute scp --recurse`), delete, and all (the sequence;
it deletes the VMs at the end even after a failure, unless --keep). With --dry-run the commands are
printed, one per line, and nothing is run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

if __package__ in (None, ''):  # Run as `python launch/gpu_vm.py`: make `launch` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from launch import common  # pylint: disable=wrong-import-position

# Machine type holding N GPUs of a kind; other kinds need --machine-type.
MACHINE_TYPES = {
    'nvidia-h100-80gb': 'a3-highgpu-{count}g',
    'nvidia-a100-80gb': 'a2-ultragpu-{count}g',
    'nvidia-tesla-a100': 'a2-highgpu-{count}g',
}


def host_names(name: str, num_hosts: int) -> list[str]:
  """One VM keeps `name`; several are `name-0`, `name-1`, ... (host 0 is the coordinator)."""
  return [name] if num_hosts == 1 else [f'{name}-{index}' for index in range(num_hosts)]


def default_machine_type(gpu_type: str, gpu_count: int) -> str:
  if gpu_type not in MACHINE_TYPES:
    raise ValueError(f'--machine-type: no default for --gpu-type={gpu_type}; pass one, e.g. '
                     '--machine-type=g2-standard-8 for one nvidia-l4.')
  return MACHINE_TYPES[gpu_type].format(count=gpu_count)


def distributed_env(hosts: Sequence[str], process_id: int, coordinator_port: int
                    ) -> dict[str, str]:
  """What `fedgan_jax.main --jax_distributed` needs on host `process_id` of a multi-VM job."""
  return {'JAX_COORDINATOR_ADDRESS': f'{hosts[0]}:{coordinator_port}',
          'JAX_NUM_PROCESSES': str(len(hosts)),
          'JAX_PROCESS_ID': str(process_id)}


def build_plan(args: argparse.Namespace) -> dict[str, list[common.Step]]:
  """Every phase's gcloud commands for the parsed arguments."""
  location = common.gcloud_location_flags(args)
  hosts = host_names(args.name, args.num_hosts)
  multi_host = len(hosts) > 1
  retry = dict(attempts=args.ssh_attempts, retry_wait_s=args.ssh_retry_wait_s)

  def ssh(host: str, *commands: Sequence[str]) -> list[str]:
    return ['gcloud', 'compute', 'ssh', host, *location,
            f'--command={common.remote_script(*commands)}']

  create = ['gcloud', 'compute', 'instances', 'create', *hosts, *location,
            f'--machine-type={args.machine_type}',
            f'--accelerator=type={args.gpu_type},count={args.gpu_count}',
            f'--image-family={args.image_family}', f'--image-project={args.image_project}',
            '--maintenance-policy=TERMINATE', f'--boot-disk-size={args.boot_disk_size}',
            '--metadata=install-nvidia-driver=True']
  if args.spot:
    create += ['--provisioning-model=SPOT', '--instance-termination-action=DELETE']

  setup = []
  archive_name = None
  if not args.repo_url:
    archive = common.archive_path(args.name)
    archive_name = pathlib.PurePath(archive).name
    setup += [
        common.make_step(f'pack the committed HEAD of {args.repo_dir} (uncommitted edits are not '
                         'included)', common.archive_command(args.repo_dir, archive)),
        common.make_step('copy the code to every VM',
                         *[['gcloud', 'compute', 'scp', archive, f'{host}:{archive_name}',
                            *location] for host in hosts], **retry),
    ]
  jax_install = [[common.REMOTE_PYTHON, '-m', 'pip', 'install', '-e', '.', args.jax_package]]
  install = [*common.source_commands(args, archive_name), ['cd', args.remote_dir],
             *common.install_commands(args, jax_install)]
  setup.append(common.make_step('install the project and JAX on every VM',
                                *[ssh(host, *install) for host in hosts], **retry))

  def main_on(process_id: int) -> list[str]:
    env = (distributed_env(hosts, process_id, args.coordinator_port) if multi_host else None)
    return common.main_command(args.config or '', args.workdir, args.overrides,
                               jax_distributed=multi_host, env=env)

  # Every process of a multi-host job must start before any can finish initializing, hence one
  # step whose ssh commands run at the same time.
  run = [common.make_step('train on every VM at once' if multi_host else 'train',
                          *[ssh(host, ['cd', args.remote_dir], main_on(process_id))
                            for process_id, host in enumerate(hosts)], fail_fast=True)]

  fetch = common.fetch_steps(args, lambda remote: ['gcloud', 'compute', 'scp', '--recurse',
                                                   f'{hosts[0]}:{remote}', args.local_dir,
                                                   *location])
  delete = [common.make_step('delete the VM' + ('s' if multi_host else ''),
                             ['gcloud', 'compute', 'instances', 'delete', *hosts, *location,
                              '--quiet'])]
  return {'create': [common.make_step('create the GPU VM' + ('s' if multi_host else ''), create)],
          'setup': setup, 'run': run, 'fetch': fetch, 'delete': delete}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  own, trailing = common.split_trailing_overrides(argv)
  parser = argparse.ArgumentParser(prog='python -m launch.gpu_vm',
                                   description=__doc__.split('\n\n')[0])
  subparsers = parser.add_subparsers(dest='command', required=True)
  for name in common.SUBCOMMANDS:
    sub = subparsers.add_parser(name)
    common.add_common_arguments(sub)
    sub.add_argument('--gpu-type', default='nvidia-h100-80gb')
    sub.add_argument('--gpu-count', type=int, default=8, help='GPUs per VM.')
    sub.add_argument('--machine-type', help='Default: the A3/A2 type holding --gpu-count GPUs.')
    sub.add_argument('--num-hosts', type=int, default=1, help='VMs in one JAX job.')
    sub.add_argument('--coordinator-port', type=int, default=8476,
                     help='Port on host 0 where the other hosts join the JAX job.')
    sub.add_argument('--image-family', default='common-cu129-ubuntu-2204-nvidia-580',
                     help='Deep Learning VM image family (CUDA and NVIDIA driver included).')
    sub.add_argument('--image-project', default='deeplearning-platform-release')
    sub.add_argument('--boot-disk-size', default='200GB')
    sub.add_argument('--jax-package', default='jax[cuda12]',
                     help='pip requirement for JAX on the VM, e.g. "jax[cuda12]==0.10.2".')
  args = parser.parse_args(own)
  args = common.finish_arguments(parser, args, trailing)
  try:
    for flag in ('gpu_count', 'num_hosts'):
      if getattr(args, flag) < 1:
        raise ValueError(f'--{flag.replace("_", "-")}: expected at least 1, got '
                         f'{getattr(args, flag)}.')
    # Host names add "-<index>", which must still be a valid VM name.
    for host in host_names(args.name, args.num_hosts):
      common.validate_name(host)
    args.machine_type = args.machine_type or default_machine_type(args.gpu_type, args.gpu_count)
  except ValueError as error:
    parser.error(str(error))
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  runner = common.Runner(dry_run=args.dry_run)
  keep_hint = (f'Delete it with: python -m launch.gpu_vm delete --name={args.name} '
               f'--zone={args.zone} --num-hosts={args.num_hosts}'
               + (f' --project={args.project}' if args.project else ''))
  return common.execute(runner, build_plan(args), args.command, args.keep, keep_hint,
                        common.workdir_warnings(args, multi_host=args.num_hosts > 1))


if __name__ == '__main__':
  sys.exit(main())
