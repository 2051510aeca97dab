"""Typed variant parsing for every config file: `--config=configs/x.py:runlocal,size=128`.

A config's `get_config(arg)` receives the text after the colon. `parse(arg, config_file,
flags=..., values=...)` splits it at commas into on/off flags (`runlocal`) and typed
`name=value` options (`size=128`), and returns them as a dict: each flag True or False, each
option its value or None when not given. Anything else is an error that names the config
file, the bad option, the closest known one and every option the file takes, so a typo
(`runlcoal`) never silently builds the default config. `format(options)` writes a dict back as
the text, for a config that passes its options on to the one it builds on.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping, Sequence


def _help(config_file: str, flags: Sequence[str], values: Mapping[str, tuple]) -> str:
  known = [*flags, *(f'{name}=<{kind.__name__}>' + (f' in {list(choices)}' if choices else '')
                     for name, (kind, choices) in values.items())]
  return f'{config_file} takes {", ".join(known) or "no options"}'


def parse(arg: str | None, config_file: str, flags: Sequence[str] = (),
          values: Mapping[str, tuple[Callable[[str], Any], Sequence | None]] | None = None
          ) -> dict[str, Any]:
  """Parses a variant string.

  Args:
    arg: the text after the config file's colon, or None.
    config_file: the config file, for error messages.
    flags: options without a value.
    values: typed options, name -> (type, allowed values or None), e.g.
      `{'size': (int, (28, 32, 64))}`.

  Returns:
    {flag: bool} and {option: value or None} for every flag and option declared.

  Raises:
    ValueError: naming the config file, for an unknown, repeated or ill-typed option.
  """
  values = dict(values or {})
  options: dict[str, Any] = {**{f: False for f in flags}, **{v: None for v in values}}
  seen = set()
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, has_value, text = item.partition('=')
    name = name.strip()
    if name in seen:
      raise ValueError(f'{config_file}: option {name!r} given twice in {arg!r}.')
    seen.add(name)
    if name in flags and not has_value:
      options[name] = True
    elif name in values and has_value:
      kind, choices = values[name]
      try:
        value = kind(text.strip())
      except ValueError:
        raise ValueError(f'{config_file}: {name}={text} is not a {kind.__name__}; '
                         f'{_help(config_file, flags, values)}.') from None
      if choices is not None and value not in choices:
        raise ValueError(f'{config_file}: {name}={text} is not one of {list(choices)}.')
      options[name] = value
    else:
      if name in flags or name in values:
        problem = 'takes no value' if name in flags else 'needs a value (name=value)'
        raise ValueError(f'{config_file}: option {item!r} {problem}; '
                         f'{_help(config_file, flags, values)}.')
      close = difflib.get_close_matches(name, [*flags, *values], n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ValueError(f'{config_file}: unknown option {item!r}{hint}; '
                       f'{_help(config_file, flags, values)}, e.g. '
                       f'--config={config_file}:{",".join([*flags][:1]) or "..."}.')
  return options


def format(options: Mapping[str, Any]) -> str | None:  # pylint: disable=redefined-builtin
  """The variant text of `options` (True flags and set values), or None when empty."""
  parts = [name if value is True else f'{name}={value}' for name, value in options.items()
           if value is not None and value is not False]
  return ','.join(parts) or None
