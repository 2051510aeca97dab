"""Tests of the launch scripts: the exact gcloud commands of --dry-run, and the failure handling
of a real run against a fake subprocess (no cloud, no gcloud needed)."""

import pathlib
import shlex
import subprocess
import sys

import pytest

from launch import common
from launch import gpu_vm
from launch import tpu_vm

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SPACED_OVERRIDE = '--config.data.name=two words'


@pytest.fixture
def repo_dir(tmp_path):
  """A checkout holding the config the scripts check for before paying for a VM."""
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'tiny.py').write_text('"""Test config."""\n')
  return tmp_path


@pytest.fixture
def no_subprocess(monkeypatch):
  """Fails the test if anything tries to start a process."""
  def refuse(*args, **kwargs):
    raise AssertionError(f'a dry run started a process: {args}')
  for name in ('Popen', 'run', 'call', 'check_call', 'check_output'):
    monkeypatch.setattr(subprocess, name, refuse)


def base_argv(subcommand, repo_dir, name='fedgan-test', *extra):
  return [subcommand, f'--name={name}', '--zone=us-central2-b', '--project=proj',
          '--config=configs/tiny.py', f'--repo-dir={repo_dir}', *extra]


def printed_commands(output):
  """Parses a dry run's stdout back into argv lists (comments and `wait` dropped)."""
  commands = []
  for line in output.splitlines():
    if not line or line.startswith('#') or line == 'wait':
      continue
    commands.append(shlex.split(line.removesuffix(' &')))
  return commands


def dry_run(module, argv, capsys):
  assert module.main([argv[0], '--dry-run', *argv[1:]]) == 0
  return printed_commands(capsys.readouterr().out)


def remote_commands(command):
  """The remote shell line of an ssh command, split into its `&&`-joined argv lists."""
  [flag] = [arg for arg in command if arg.startswith('--command=')]
  tokens = shlex.split(flag.removeprefix('--command='))
  pieces, current = [], []
  for token in tokens:
    if token == '&&':
      pieces.append(current)
      current = []
    else:
      current.append(token)
  return pieces + [current]


def kind(command):
  """'create', 'ssh', 'scp', 'delete', ... for gcloud commands; the program name otherwise."""
  if command[0] != 'gcloud':
    return command[0]
  return command[4] if command[2] == 'tpus' else (
      command[2] if command[2] in ('ssh', 'scp') else command[3])


@pytest.mark.parametrize('accelerator_type, expected', [
    ('v4-8', False), ('v4-16', True), ('v4-32', True), ('v5litepod-8', False),
    ('v5litepod-16', True), ('v5p-8', False), ('v3-32', True), ('v6e-4', False)])
def test_is_pod_slice_when_larger_than_one_host(accelerator_type, expected):
  assert tpu_vm.is_pod_slice(accelerator_type) is expected


@pytest.mark.parametrize('accelerator_type, expected', [
    ('v4-32', 'tpu-ubuntu2204-base'), ('v5litepod-8', 'v2-alpha-tpuv5-lite'),
    ('v5p-16', 'v2-alpha-tpuv5'), ('v6e-8', 'v2-alpha-tpuv6e')])
def test_default_runtime_version_by_generation(accelerator_type, expected):
  assert tpu_vm.default_runtime_version(accelerator_type) == expected


def test_tpu_single_host_all_prints_the_exact_sequence(repo_dir, capsys, no_subprocess):
  commands = dry_run(tpu_vm, base_argv('all', repo_dir, 'fedgan-test', '--accelerator-type=v4-8'),
                     capsys)
  assert [kind(c) for c in commands] == ['create', 'git', 'scp', 'ssh', 'ssh', 'mkdir', 'scp',
                                         'delete']
  location = ['--zone=us-central2-b', '--project=proj']
  assert commands[0] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'fedgan-test', *location,
                         '--accelerator-type=v4-8', '--version=tpu-ubuntu2204-base']
  archive = common.archive_path('fedgan-test')
  assert commands[1] == ['git', '-C', str(repo_dir), 'archive', '--format=tar.gz',
                         f'--output={archive}', 'HEAD']
  assert commands[2] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive,
                         'fedgan-test:fedgan_jax-fedgan-test.tar.gz', *location]
  assert remote_commands(commands[3]) == [
      ['mkdir', '-p', 'fedgan_jax'], ['tar', '-xzf', 'fedgan_jax-fedgan-test.tar.gz', '-C',
                                      'fedgan_jax'],
      ['cd', 'fedgan_jax'], ['python3', '-m', 'pip', 'install', '--user', '--upgrade', 'uv'],
      ['python3', '-m', 'uv', 'venv', '--seed', '--allow-existing', '--python', '3.11', '.venv'],
      ['.venv/bin/python', '-m', 'pip', 'install', '-e', '.'],
      ['.venv/bin/python', '-m', 'pip', 'install', 'jax[tpu]']]
  assert remote_commands(commands[4]) == [
      ['cd', 'fedgan_jax'], ['.venv/bin/python', '-m', 'fedgan_jax.main',
                             '--config=configs/tiny.py', '--workdir=workdirs/fedgan-test']]
  assert commands[6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse',
                         'fedgan-test:fedgan_jax/workdirs/fedgan-test', 'workdirs', *location,
                         '--worker=0']
  assert commands[7] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'fedgan-test',
                         *location, '--quiet']
  assert not any('--worker=all' in c for c in commands)


def test_tpu_pod_slice_runs_on_every_worker_with_jax_distributed(repo_dir, capsys, no_subprocess):
  commands = dry_run(tpu_vm, base_argv('all', repo_dir, 'pod', '--accelerator-type=v4-32',
                                       '--workdir=gs://bucket/run1'), capsys)
  to_vm = [c for c in commands if kind(c) in ('scp', 'ssh') and '--recurse' not in c]
  assert len(to_vm) == 3 and all('--worker=all' in c for c in to_vm)
  train = remote_commands(to_vm[-1])[-1]
  assert train[-1] == '--jax_distributed'
  assert '--workdir=gs://bucket/run1' in train
  # The workdir is on GCS, so it comes back with gcloud storage, not scp from a worker.
  assert ['gcloud', 'storage', 'cp', '--recursive', 'gs://bucket/run1', 'workdirs'] in commands


def test_multi_host_flag_overrides_the_slice_size(repo_dir, capsys, no_subprocess):
  commands = dry_run(tpu_vm, base_argv('run', repo_dir, 'pod', '--accelerator-type=v4-32',
                                       '--no-multi-host'), capsys)
  assert '--worker=all' not in commands[0]
  assert '--jax_distributed' not in remote_commands(commands[0])[-1]


@pytest.mark.parametrize('module', [tpu_vm, gpu_vm])
def test_overrides_reach_main_as_single_quoted_arguments(module, repo_dir, capsys, no_subprocess):
  argv = base_argv('run', repo_dir, 'ov', f'--overrides={SPACED_OVERRIDE}',
                   '--overrides=config.federated.rounds=3', '--', 'model.width=8',
                   "--config.data.sites=('a', 'b')")
  [train] = dry_run(module, argv, capsys)
  assert remote_commands(train)[-1][-4:] == [
      SPACED_OVERRIDE, '--config.federated.rounds=3', '--config.model.width=8',
      "--config.data.sites=('a', 'b')"]


@pytest.mark.parametrize('bad, message', [
    (['--overrides=rounds'], '--overrides'), (['--', '--workdir=x'], '--overrides'),
    (['--name=Bad_Name'], '--name'), (['--config=configs/missing.py'], 'configs/missing.py'),
    (['--accelerator-type=v4'], '--accelerator-type')])
def test_bad_arguments_are_usage_errors_naming_the_flag(bad, message, repo_dir, capsys,
                                                        no_subprocess):
  with pytest.raises(SystemExit) as exit_info:
    tpu_vm.main([*base_argv('all', repo_dir), *bad, '--dry-run'])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_repo_url_clones_instead_of_copying_the_checkout(repo_dir, capsys, no_subprocess):
  commands = dry_run(tpu_vm, base_argv('setup', repo_dir, 'clone',
                                       '--repo-url=https://example.com/fedgan_jax.git',
                                       '--repo-ref=v1.0'), capsys)
  assert [kind(c) for c in commands] == ['ssh']
  assert remote_commands(commands[0])[:3] == [
      ['git', 'init', '-q', 'fedgan_jax'],
      ['git', '-C', 'fedgan_jax', 'fetch', '-q', '--depth=1', 'https://example.com/fedgan_jax.git',
       'v1.0'],
      ['git', '-C', 'fedgan_jax', 'checkout', '-q', '--force', 'FETCH_HEAD']]


def test_keep_leaves_the_vm_and_says_how_to_delete_it(repo_dir, capsys, no_subprocess):
  assert tpu_vm.main([*base_argv('all', repo_dir), '--keep', '--dry-run']) == 0
  output = capsys.readouterr().out
  assert 'delete' not in [kind(c) for c in printed_commands(output)]
  assert 'python -m launch.tpu_vm delete --name=fedgan-test' in output


def test_gpu_single_vm_all_prints_the_exact_sequence(repo_dir, capsys, no_subprocess):
  commands = dry_run(gpu_vm, base_argv('all', repo_dir, 'gpu', '--gpu-count=4', '--spot'), capsys)
  assert [kind(c) for c in commands] == ['create', 'git', 'scp', 'ssh', 'ssh', 'mkdir', 'scp',
                                         'delete']
  location = ['--zone=us-central2-b', '--project=proj']
  assert commands[0] == [
      'gcloud', 'compute', 'instances', 'create', 'gpu', *location,
      '--machine-type=a3-highgpu-4g', '--accelerator=type=nvidia-h100-80gb,count=4',
      '--image-family=common-cu129-ubuntu-2204-nvidia-580',
      '--image-project=deeplearning-platform-release', '--maintenance-policy=TERMINATE',
      '--boot-disk-size=200GB', '--metadata=install-nvidia-driver=True',
      '--provisioning-model=SPOT', '--instance-termination-action=DELETE']
  assert commands[3][:5] == ['gcloud', 'compute', 'ssh', 'gpu', *location[:1]]
  assert remote_commands(commands[3])[-1] == ['.venv/bin/python', '-m', 'pip', 'install', '-e',
                                              '.', 'jax[cuda12]']
  assert remote_commands(commands[4])[-1] == [
      '.venv/bin/python', '-m', 'fedgan_jax.main', '--config=configs/tiny.py',
      '--workdir=workdirs/gpu']
  assert commands[6] == ['gcloud', 'compute', 'scp', '--recurse', 'gpu:fedgan_jax/workdirs/gpu',
                         'workdirs', *location]
  assert commands[7] == ['gcloud', 'compute', 'instances', 'delete', 'gpu', *location, '--quiet']


def test_gpu_multi_host_sets_coordinator_process_count_and_id(repo_dir, capsys, no_subprocess):
  argv = base_argv('all', repo_dir, 'job', '--num-hosts=3', '--coordinator-port=1234')
  assert gpu_vm.main([*argv, '--dry-run']) == 0
  output = capsys.readouterr().out
  commands = printed_commands(output)
  hosts = ['job-0', 'job-1', 'job-2']
  assert commands[0][4:7] == hosts
  assert commands[-1][4:7] == hosts and commands[-1][-1] == '--quiet'
  trains = [c for c in commands if kind(c) == 'ssh' and 'fedgan_jax.main' in c[-1]]
  assert [c[3] for c in trains] == hosts
  for process_id, train in enumerate(trains):
    assert remote_commands(train)[-1][:4] == [
        'env', 'JAX_COORDINATOR_ADDRESS=job-0:1234', 'JAX_NUM_PROCESSES=3',
        f'JAX_PROCESS_ID={process_id}']
    assert remote_commands(train)[-1][-1] == '--jax_distributed'
  # The hosts must start together: the printed script backgrounds each and waits.
  train_lines = [line for line in output.splitlines() if 'fedgan_jax.main' in line]
  assert all(line.endswith(' &') for line in train_lines)
  assert 'job-0:fedgan_jax/workdirs/job' in [c for c in commands if '--recurse' in c][0]
  assert 'warning: --workdir=workdirs/job' in output


def test_gpu_without_known_machine_type_asks_for_one(repo_dir, capsys, no_subprocess):
  with pytest.raises(SystemExit):
    gpu_vm.main([*base_argv('create', repo_dir), '--gpu-type=nvidia-l4', '--dry-run'])
  assert '--machine-type' in capsys.readouterr().err


@pytest.mark.parametrize('script', ['launch/tpu_vm.py', '-m launch.gpu_vm'])
def test_scripts_run_from_the_command_line(script, repo_dir):
  argv = [sys.executable, *script.split(), *base_argv('all', repo_dir, 'cli'), '--dry-run',
          '--', SPACED_OVERRIDE]
  result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                          timeout=60)
  commands = printed_commands(result.stdout)
  assert kind(commands[0]) == 'create' and kind(commands[-1]) == 'delete'
  assert SPACED_OVERRIDE in remote_commands(commands[4])[-1]


class FakeProcess:
  """Exits with `status` at the first poll; with None, runs until terminated."""

  def __init__(self, status):
    self.status = status
    self.terminated = False
    self.polls = 0

  def poll(self):
    self.polls += 1
    if self.status is None and not self.terminated and self.polls > 100:
      raise AssertionError('a process that never exits was not terminated')
    return -15 if self.terminated else self.status

  def wait(self):
    return self.poll()

  def terminate(self):
    self.terminated = True


@pytest.fixture
def fake_popen(monkeypatch):
  """Records started commands; `statuses` maps a substring of a command to its exit statuses."""
  started = []
  statuses = {}

  def popen(command):
    line = shlex.join(command)
    status = 0
    for needle, queue in statuses.items():
      if needle in line:
        status = queue.pop(0) if len(queue) > 1 else queue[0]
        break
    process = FakeProcess(status)
    started.append((command, process))
    return process

  monkeypatch.setattr(subprocess, 'Popen', popen)
  return started, statuses


def run_real(module, argv, monkeypatch):
  sleeps = []
  monkeypatch.setattr(common.time, 'sleep', sleeps.append)
  return module.main(argv), sleeps


def test_all_fetches_and_deletes_when_the_run_fails(repo_dir, fake_popen, monkeypatch, capsys):
  started, statuses = fake_popen
  statuses['fedgan_jax.main'] = [1]
  status, _ = run_real(tpu_vm, base_argv('all', repo_dir), monkeypatch)
  assert status == 1
  assert [kind(c) for c, _ in started] == ['create', 'git', 'scp', 'ssh', 'ssh', 'mkdir', 'scp',
                                           'delete']
  error = capsys.readouterr().err
  assert 'error: train failed' in error and 'exited with status 1' in error


def test_all_deletes_after_a_failed_create_and_runs_nothing_else(repo_dir, fake_popen,
                                                                 monkeypatch):
  started, statuses = fake_popen
  statuses['tpu-vm create'] = [1]
  status, _ = run_real(tpu_vm, base_argv('all', repo_dir), monkeypatch)
  assert status == 1
  assert [kind(c) for c, _ in started] == ['create', 'delete']


def test_failed_delete_prints_the_command_to_delete_by_hand(repo_dir, fake_popen, monkeypatch,
                                                            capsys):
  _, statuses = fake_popen
  statuses['tpu-vm delete'] = [1]
  status, _ = run_real(tpu_vm, base_argv('all', repo_dir), monkeypatch)
  assert status == 1
  error = capsys.readouterr().err
  assert ('delete it by hand with: gcloud compute tpus tpu-vm delete fedgan-test '
          '--zone=us-central2-b --project=proj --quiet') in error


def test_setup_retries_ssh_until_the_vm_accepts_it(repo_dir, fake_popen, monkeypatch):
  started, statuses = fake_popen
  statuses['pip install'] = [255, 255, 0]
  status, sleeps = run_real(gpu_vm, base_argv('setup', repo_dir, 'gpu', '--ssh-attempts=3',
                                              '--ssh-retry-wait-s=7'), monkeypatch)
  assert status == 0
  assert [kind(c) for c, _ in started] == ['git', 'scp', 'ssh', 'ssh', 'ssh']
  assert [s for s in sleeps if s != common.POLL_INTERVAL_S] == [7, 7]


def test_setup_gives_up_after_the_last_attempt(repo_dir, fake_popen, monkeypatch, capsys):
  started, statuses = fake_popen
  statuses['pip install'] = [255]
  status, _ = run_real(gpu_vm, base_argv('setup', repo_dir, 'gpu', '--ssh-attempts=2'),
                       monkeypatch)
  assert status == 1
  assert [kind(c) for c, _ in started].count('ssh') == 2
  assert 'status 255' in capsys.readouterr().err


def test_one_failed_host_stops_the_others(repo_dir, fake_popen, monkeypatch):
  started, statuses = fake_popen
  statuses['JAX_PROCESS_ID=1'] = [1]
  statuses['JAX_PROCESS_ID=0'] = [None]  # Would wait forever for process 1 to join.
  status, _ = run_real(gpu_vm, base_argv('run', repo_dir, 'job', '--num-hosts=2'), monkeypatch)
  assert status == 1
  [host_0] = [process for command, process in started if 'JAX_PROCESS_ID=0' in command[-1]]
  assert host_0.terminated


def test_missing_gcloud_says_how_to_install_it(repo_dir, monkeypatch, capsys):
  def popen(command):
    raise FileNotFoundError(2, 'No such file or directory', command[0])
  monkeypatch.setattr(subprocess, 'Popen', popen)
  assert tpu_vm.main(base_argv('create', repo_dir)) == 1
  assert 'Install the Google Cloud CLI' in capsys.readouterr().err


def test_interrupted_run_still_deletes_the_vm(repo_dir, fake_popen, monkeypatch, capsys):
  started, _ = fake_popen

  def interrupt():
    raise KeyboardInterrupt
  original_popen = subprocess.Popen

  def popen(command):
    process = original_popen(command)
    if 'fedgan_jax.main' in command[-1]:
      process.poll = interrupt
    return process
  monkeypatch.setattr(subprocess, 'Popen', popen)
  status, _ = run_real(tpu_vm, base_argv('all', repo_dir), monkeypatch)
  assert status == 130
  assert [kind(c) for c, _ in started][-2:] == ['ssh', 'delete']
  assert 'interrupted' in capsys.readouterr().err
