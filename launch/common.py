"""Shared pieces of the launch scripts: plans of shell commands, and running or printing them.

A launch is a plan: for each phase (create, setup, run, fetch, delete) a list of `Step`s, each
holding one argv list or several that run at once (one ssh per host of a multi-host job). `Runner`
either prints the plan as a shell script (`--dry-run`: nothing is executed) or runs it with
subprocess, stopping at the first failure. `run_lifecycle` runs create -> setup -> run -> fetch and
then always tries delete, so that a failed or interrupted run does not leave a paid VM running.

Remote commands are built as argv lists and quoted with `shlex`, so an override value with spaces
reaches `fedgan_jax.main` as one argument after both the local and the remote shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Mapping, Sequence, TextIO

PHASES = ('create', 'setup', 'run', 'fetch', 'delete')
SUBCOMMANDS = PHASES + ('all',)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The interpreter of the virtual environment made on the VM, relative to the remote checkout.
REMOTE_PYTHON = '.venv/bin/python'
# How often a step with several commands checks which have finished.
POLL_INTERVAL_S = 1.0
_NAME_PATTERN = re.compile(r'^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')
_OVERRIDE_PATTERN = re.compile(r'^--config(\.[A-Za-z_]\w*)+=')

Command = tuple[str, ...]


class CommandError(RuntimeError):
  """A command of the plan failed (or could not start); the message says which and how."""


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of a plan: its commands run at the same time; all must succeed.

  Attributes:
    description: what the step does, printed before it (`# ...`) and named in errors.
    commands: argv lists; more than one run in parallel (e.g. one ssh per host).
    attempts: tries per command; ssh/scp right after a VM boots may be refused for a while.
    retry_wait_s: pause between tries.
    fail_fast: stop the other commands when one fails; the processes of a multi-host job would
      otherwise wait forever for the one that died.
  """
  description: str
  commands: tuple[Command, ...]
  attempts: int = 1
  retry_wait_s: float = 0.0
  fail_fast: bool = False


def make_step(description: str, *commands: Sequence[str], attempts: int = 1,
              retry_wait_s: float = 0.0, fail_fast: bool = False) -> Step:
  return Step(description, tuple(tuple(c) for c in commands), attempts, retry_wait_s, fail_fast)


def remote_script(*commands: Sequence[str]) -> str:
  """One remote shell line running `commands` in order, stopping at the first failure."""
  return ' && '.join(shlex.join(command) for command in commands)


class Runner:
  """Prints a plan (dry run) or executes it with subprocess."""

  def __init__(self, dry_run: bool, out: TextIO | None = None, log: TextIO | None = None,
               sleep: Callable[[float], None] | None = None):
    self.dry_run = dry_run
    self._out = out
    self._log = log
    self._sleep = sleep

  @property
  def out(self) -> TextIO:
    return self._out or sys.stdout

  @property
  def log(self) -> TextIO:
    return self._log or sys.stderr

  def _pause(self, seconds: float) -> None:
    (self._sleep or time.sleep)(seconds)

  def note(self, text: str) -> None:
    """A comment: on stdout in a dry run (the printed script stays valid), else on stderr."""
    print(f'# {text}', file=self.out if self.dry_run else self.log, flush=True)

  def run(self, step: Step) -> None:
    """Runs (or prints) one step; raises CommandError when a command fails every attempt."""
    self.note(step.description)
    if self.dry_run:
      parallel = len(step.commands) > 1
      for command in step.commands:
        print(shlex.join(command) + (' &' if parallel else ''), file=self.out)
      if parallel:
        print('wait', file=self.out)
      self.out.flush()
      return
    pending = list(step.commands)
    for attempt in range(1, step.attempts + 1):
      failures = self._run_parallel(step.description, pending, step.fail_fast)
      if not failures:
        return
      pending = [command for command, _ in failures]
      if attempt < step.attempts:
        self.note(f'{len(failures)} command(s) failed; try {attempt + 1} of {step.attempts} '
                  f'in {step.retry_wait_s:g}s')
        self._pause(step.retry_wait_s)
    command, status = failures[0]
    raise CommandError(f'{step.description} failed: `{shlex.join(command)}` exited with status '
                       f'{status}.')

  def _run_parallel(self, description: str, commands: Sequence[Command],
                    fail_fast: bool) -> list[tuple[Command, int]]:
    """Runs `commands` at once; returns the failed ones with their status, first failure first."""
    processes = []
    try:
      for command in commands:
        print(f'+ {shlex.join(command)}', file=self.log, flush=True)
        processes.append((command, subprocess.Popen(command)))
    except OSError as error:
      for _, process in processes:  # Do not leave half a multi-host job running.
        process.terminate()
        process.wait()
      hint = (' Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run '
              '`gcloud auth login`.' if command[0] == 'gcloud' else '')
      raise CommandError(f'{description} failed: could not start `{command[0]}` ({error}).'
                         f'{hint}') from error
    failures = []
    running = dict(enumerate(processes))
    while running:
      for index, (command, process) in list(running.items()):
        status = process.poll()
        if status is None:
          continue
        del running[index]
        if status != 0:
          failures.append((command, status))
          if fail_fast:
            for _, other in running.values():
              other.terminate()
      if running:
        self._pause(POLL_INTERVAL_S)
    return failures


def run_phase(runner: Runner, steps: Sequence[Step]) -> None:
  for step in steps:
    runner.run(step)


def run_lifecycle(runner: Runner, plan: Mapping[str, Sequence[Step]], keep: bool,
                  keep_hint: str = '') -> None:
  """create -> setup -> run -> fetch, then delete unless `keep`, whatever happened before.

  If the run fails, the workdir is still fetched (best effort): checkpoints and logs of a failed
  run are what one needs to debug it. The first error is re-raised after the deletion.
  """
  failure: BaseException | None = None
  phase = None
  try:
    for phase in ('create', 'setup', 'run', 'fetch'):
      run_phase(runner, plan[phase])
  except BaseException as error:  # KeyboardInterrupt too: the VM must go either way.
    failure = error
    if phase == 'run' and isinstance(error, CommandError):
      runner.note(f'{error} Fetching what the run wrote before deleting.')
      try:
        run_phase(runner, plan['fetch'])
      except CommandError as fetch_error:
        runner.note(f'{fetch_error} Nothing was copied back.')
  if keep:
    runner.note(f'--keep: the VM is left running (and billed). {keep_hint}'.rstrip())
  else:
    try:
      run_phase(runner, plan['delete'])
    except CommandError as delete_error:
      by_hand = '; '.join(shlex.join(c) for step in plan['delete'] for c in step.commands)
      runner.note(f'{delete_error} THE VM MAY STILL BE RUNNING: delete it by hand with: {by_hand}')
      failure = failure or delete_error
  if failure is not None:
    raise failure


def execute(runner: Runner, plan: Mapping[str, Sequence[Step]], subcommand: str, keep: bool,
            keep_hint: str = '', warnings: Sequence[str] = ()) -> int:
  """Runs one subcommand of the plan; returns the process exit status."""
  if runner.dry_run:
    runner.note('dry run: the commands below are printed, not executed')
  for warning in warnings:
    runner.note(f'warning: {warning}')
  try:
    if subcommand == 'all':
      run_lifecycle(runner, plan, keep, keep_hint)
    else:
      run_phase(runner, plan[subcommand])
  except CommandError as error:
    print(f'error: {error}', file=runner.log, flush=True)
    return 1
  except KeyboardInterrupt:
    print('error: interrupted.', file=runner.log, flush=True)
    return 130
  return 0


def split_trailing_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `argv` at the first `--`: what follows is config overrides for fedgan_jax.main."""
  argv = list(argv)
  if '--' in argv:
    index = argv.index('--')
    return argv[:index], argv[index + 1:]
  return argv, []


def normalize_overrides(values: Sequence[str]) -> list[str]:
  """Returns overrides as `--config.a.b=v`; accepts `config.a.b=v` and `a.b=v` too."""
  overrides = []
  for given in values:
    value = given
    if value.startswith('config.'):
      value = '--' + value
    elif not value.startswith('-'):
      value = '--config.' + value
    if not _OVERRIDE_PATTERN.match(value):
      raise ValueError(f'--overrides: expected --config.<field>=<value> (e.g. '
                       f'--overrides=--config.fl.num_rounds=100), got {given!r}.')
    overrides.append(value)
  return overrides


def validate_name(name: str) -> str:
  if not _NAME_PATTERN.match(name):
    raise ValueError(f'--name: expected a lowercase name of at most 63 letters, digits and dashes, '
                     f'starting with a letter (e.g. fedgan-run1), got {name!r}.')
  return name


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
  """Options every subcommand of both scripts takes."""
  parser.add_argument('--name', required=True, help='VM name (prefix of host names if several).')
  parser.add_argument('--zone', required=True, help='e.g. us-central2-b.')
  parser.add_argument('--project', help='GCP project; default: gcloud config.')
  parser.add_argument('--spot', action='store_true', help='Spot VM: cheaper, can be preempted.')
  parser.add_argument('--dry-run', action='store_true',
                      help='Print the commands, one per line, and run nothing.')
  parser.add_argument('--keep', action='store_true', help='`all`: do not delete the VM at the end.')
  parser.add_argument('--config', help='Config of fedgan_jax.main, relative to the repo, e.g. '
                      'configs/phantom.py (required by run and all).')
  parser.add_argument('--workdir', help='Workdir on the VM: relative to the remote checkout, '
                      'absolute, or gs://...; default workdirs/<name>.')
  parser.add_argument('--overrides', action='append', default=[],
                      help='Repeatable --overrides=--config.x.y=value (or give them after `--`).')
  parser.add_argument('--repo-url', help='git URL to clone on the VM instead of copying the local '
                      'checkout.')
  parser.add_argument('--repo-ref', default='HEAD', help='Branch, tag or commit of --repo-url.')
  parser.add_argument('--repo-dir', default=str(REPO_ROOT),
                      help='Local checkout to copy (its committed HEAD) when no --repo-url.')
  parser.add_argument('--remote-dir', default='fedgan_jax',
                      help='Checkout folder on the VM, relative to the remote home.')
  parser.add_argument('--python-version', default='3.11',
                      help='Python of the VM virtual environment (made with uv).')
  parser.add_argument('--local-dir', default='workdirs',
                      help='Local folder the workdir is copied into by fetch.')
  parser.add_argument('--ssh-attempts', type=int, default=3,
                      help='Tries of each setup ssh/scp (a fresh VM may refuse ssh for a while).')
  parser.add_argument('--ssh-retry-wait-s', type=float, default=30.0)


def finish_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     trailing_overrides: Sequence[str]) -> argparse.Namespace:
  """Validates what argparse cannot; exits with a usage error naming the flag to fix."""
  try:
    validate_name(args.name)
    args.overrides = normalize_overrides(list(args.overrides) + list(trailing_overrides))
    if args.workdir is None:
      args.workdir = f'workdirs/{args.name}'
    args.workdir = args.workdir.rstrip('/')
    if args.ssh_attempts < 1:
      raise ValueError(f'--ssh-attempts: expected at least 1, got {args.ssh_attempts}.')
    if args.command in ('run', 'all'):
      check_config(args.config, None if args.repo_url else pathlib.Path(args.repo_dir))
  except ValueError as error:
    parser.error(str(error))
  return args


def check_config(config: str | None, repo_dir: pathlib.Path | None) -> None:
  """Fails before any VM is paid for when the config is missing from the checkout to copy."""
  if not config:
    raise ValueError('--config: required by `run` and `all`, e.g. --config=configs/phantom.py.')
  path = config.split(':', 1)[0]  # `configs/x.py:variant` selects a variant of the file.
  if repo_dir is not None and not pathlib.PurePath(path).is_absolute():
    if not (repo_dir / path).is_file():
      raise ValueError(f'--config: {path} not found in the checkout {repo_dir} (--repo-dir); '
                       'expected a path relative to the repository root.')


def main_command(config: str, workdir: str, overrides: Sequence[str], jax_distributed: bool,
                 env: Mapping[str, str] | None = None) -> list[str]:
  """argv of `fedgan_jax.main` on the VM, run from the remote checkout."""
  prefix = (['env'] + [f'{key}={value}' for key, value in env.items()]) if env else []
  command = prefix + [REMOTE_PYTHON, '-m', 'fedgan_jax.main', f'--config={config}',
                      f'--workdir={workdir}', *overrides]
  if jax_distributed:
    command.append('--jax_distributed')
  return command


def archive_path(name: str) -> str:
  """Local tarball of the checkout; a fixed path per VM so the dry run prints the real one."""
  return str(pathlib.Path(tempfile.gettempdir()) / f'fedgan_jax-{name}.tar.gz')


def archive_command(repo_dir: str, archive: str) -> list[str]:
  """Packs the committed HEAD (not uncommitted edits, nor workdirs or virtual environments)."""
  return ['git', '-C', repo_dir, 'archive', '--format=tar.gz', f'--output={archive}', 'HEAD']


def source_commands(args: argparse.Namespace, archive_name: str | None) -> list[list[str]]:
  """Remote commands that put the code in `args.remote_dir` (from the archive or git)."""
  remote_dir = args.remote_dir
  if args.repo_url:
    # init + fetch + checkout works on a fresh VM and when setup is run again.
    return [['git', 'init', '-q', remote_dir],
            ['git', '-C', remote_dir, 'fetch', '-q', '--depth=1', args.repo_url, args.repo_ref],
            ['git', '-C', remote_dir, 'checkout', '-q', '--force', 'FETCH_HEAD']]
  return [['mkdir', '-p', remote_dir], ['tar', '-xzf', archive_name, '-C', remote_dir]]


def install_commands(args: argparse.Namespace, jax_install: Sequence[Sequence[str]]
                     ) -> list[list[str]]:
  """Remote commands, run inside the checkout, that make `.venv` and install the project.

  VM images ship Python 3.10 while the project needs 3.11+, so uv provides the interpreter.
  """
  return [['python3', '-m', 'pip', 'install', '--user', '--upgrade', 'uv'],
          ['python3', '-m', 'uv', 'venv', '--seed', '--allow-existing', '--python',
           args.python_version, '.venv'],
          *[list(command) for command in jax_install]]


def remote_workdir(args: argparse.Namespace) -> str:
  """The workdir as scp sees it on the VM (relative paths are relative to the remote home)."""
  workdir = args.workdir
  if workdir.startswith('gs://') or workdir.startswith('/'):
    return workdir
  return f'{args.remote_dir}/{workdir}'


def fetch_steps(args: argparse.Namespace, scp_from_host: Callable[[str], list[str]]
                ) -> list[Step]:
  """Copies the workdir into `args.local_dir`: by scp from host 0, or from GCS."""
  make_local_dir = make_step(f'make the local folder {args.local_dir}',
                             ['mkdir', '-p', args.local_dir])
  if args.workdir.startswith('gs://'):
    return [make_local_dir,
            make_step(f'copy {args.workdir} into {args.local_dir}',
                      ['gcloud', 'storage', 'cp', '--recursive', args.workdir, args.local_dir])]
  return [make_local_dir,
          make_step(f'copy the workdir back (worker 0) into {args.local_dir}',
                    scp_from_host(remote_workdir(args)), attempts=args.ssh_attempts,
                    retry_wait_s=args.ssh_retry_wait_s)]


def workdir_warnings(args: argparse.Namespace, multi_host: bool) -> list[str]:
  """Multi-host checkpoints need a workdir every host can reach; a local one is not."""
  if multi_host and args.command in ('run', 'all') and not args.workdir.startswith('gs://'):
    return [f"--workdir={args.workdir} is on each host's own disk; a multi-host checkpoint needs "
            'one every host can reach, e.g. --workdir=gs://BUCKET/run1.']
  return []


def gcloud_location_flags(args: argparse.Namespace) -> list[str]:
  flags = [f'--zone={args.zone}']
  if args.project:
    flags.append(f'--project={args.project}')
  return flags
