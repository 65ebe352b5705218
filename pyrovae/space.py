"""Search spaces for :func:`pyrovae.sweep`: a TOML file with one table per
:class:`~pyrovae.config.Config` option, checked before any trial starts, and Optuna's suggestions
from it.

A space looks like this::

    [z_dim]
    low = 2
    high = 64
    log = true          # sample on a log scale (optional; also `step = N`)
    [lr]
    low = 1e-4
    high = 1e-2
    log = true
    [prior]
    choices = ["normal", "vamp"]
    [hidden]            # list options take choices of lists
    choices = [[400], [200, 200]]

Integer options get integers, float options floats (``trial.suggest_int`` / ``suggest_float``);
``choices`` become ``suggest_categorical``. Every other option is the base config's (the
``pyrovae sweep`` flags). A space is checked before any trial starts: names must be options,
each range's ends and each choice must pass the option's own checks on top of the base config.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path

from .config import Config, ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

#: options a space may not range over: where the data is, and how the run is placed or reported
FIXED = {"dataset", "data_dir", "data_file", "labels_file", "device", "tensorboard", "eval_k", "eval_n_test"}
OBJECTIVES = {"elbo": "best validation ELBO", "ll": "validation log p(x), importance-sampled"}
SPEC_KEYS = {"low", "high", "log", "step", "choices"}


def load_space(path: str | Path, base: Config) -> dict[str, dict]:
    """Read and check a space file against ``base``; returns ``{option: spec}``.

    :raises ConfigError: naming the option at fault, before any trial runs.
    """
    path = Path(path)
    try:
        space = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"space file {path} does not exist", "space") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"space file {path} is not valid TOML: {e}", "space") from None
    check_space(space, base)
    return space


def check_space(space: dict, base: Config) -> None:
    """Refuse unknown options, malformed specs and values the option's own checks refuse."""
    if not space:
        raise ConfigError("the search space is empty: give at least one option to search", "space")
    fields = {f.name for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for name, spec in space.items():
        if name not in fields:
            close = difflib.get_close_matches(name, sorted(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"space: {name!r} is not a train option.{hint}", "space")
        if name in FIXED:
            raise ConfigError(
                f"space: {name} is fixed for the whole sweep; give it as a flag instead", "space"
            )
        if not isinstance(spec, dict) or not spec or set(spec) - SPEC_KEYS:
            raise ConfigError(
                f"space: {name} needs a table with choices = [...] or low/high (and optional log, step)",
                "space",
            )  # fmt: skip
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"space: {name}: choices must be a non-empty list, alone", "space")
            values = spec["choices"]
        else:
            values = _check_range(name, spec, hints[name])
        for value in values:  # each end, each choice, through the option's own checks
            try:
                _check_type(name, value, hints[name])  # first: the checks below assume the type
                cfg = Config.from_dict({**dataclasses.asdict(base), name: value})
                cfg.validate()
            except (ConfigError, TypeError) as e:
                raise ConfigError(f"space: {name} = {value!r} is refused: {e}", "space") from None


def _check_range(name: str, spec: dict, hint) -> list:
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"space: {name} needs both low and high (or choices)", "space")
    kind = _scalar(hint)
    if kind not in (int, float):
        raise ConfigError(f"space: {name} is not numeric; give choices = [...] instead", "space")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"space: {name}: low and high must be numbers", "space")
    if kind is int and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"space: {name} is an integer option: low and high must be integers", "space")
    if not low < high:
        raise ConfigError(f"space: {name}: low {low} must be below high {high}", "space")
    if "log" in spec and not isinstance(spec["log"], bool):
        raise ConfigError(f"space: {name}: log must be true or false, got {spec['log']!r}", "space")
    if "step" in spec:
        step = spec["step"]
        number = int if kind is int else int | float
        if not isinstance(step, number) or isinstance(step, bool) or not step > 0:
            what = f"a positive integer ({name} is an integer option)" if kind is int else "a positive number"
            example = max(1, (high - low) // 4) if kind is int else float(f"{(high - low) / 10:.1g}")
            raise ConfigError(
                f"space: {name}: step must be {what}, got {step!r}; write e.g. step = {example}, or leave it out",
                "space",
            )
    if spec.get("log") and low <= 0:
        raise ConfigError(f"space: {name}: a log scale needs low > 0, got {low}", "space")
    if spec.get("log") and "step" in spec:
        raise ConfigError(f"space: {name}: give log or step, not both", "space")
    return [low, high]


def _scalar(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args and typing.get_origin(hint) is not list else hint


def _check_type(name: str, value, hint) -> None:
    kind = _scalar(hint)
    if typing.get_origin(kind) is list:
        ok = isinstance(value, list) and all(isinstance(v, int) for v in value)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok and value is not None:
        what = "a list of integers, e.g. [64]" if typing.get_origin(kind) is list else kind.__name__
        raise TypeError(f"{name} takes {what}, got {value!r}")


def suggest(trial, space: dict) -> dict:
    """One point of the space, suggested by ``trial``: ``{option: value}``."""
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            # Optuna's categorical values are scalars: lists travel as their JSON text
            encoded = [json.dumps(c) if isinstance(c, list) else c for c in spec["choices"]]
            value = trial.suggest_categorical(name, encoded)
            params[name] = json.loads(value) if isinstance(spec["choices"][0], list) else value
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and _is_int(name):
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))  # fmt: skip
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))  # fmt: skip
    return params


def _is_int(name: str) -> bool:
    return _scalar(typing.get_type_hints(Config)[name]) is int


# -- the study ------------------------------------------------------------------------------
