"""Command-line flags generated from the config dataclasses, and the namespace turned into config once.

A flag's name, help, choices and type come from its field; its default is not written here: the parser
leaves unset flags out of the namespace (argparse.SUPPRESS), so the config is the dataclass defaults, then
the --config file, then the flags given, in that order of precedence, and the help shows the dataclass
default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pumpcast.config import PRESETS, Settings, flag_of, key_of, read_config_file, setting_fields, with_values
from pumpcast.schema import ConfigError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage of a big command runs to dozens)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def bounded_int(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high if high is not None else 'inf'}]")
        return value

    return parse


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def _value_parser(tp: Any):
    """A string -> value converter for argparse from a field's annotation."""
    allowed = [t for t in (typing.get_args(tp) or (tp,)) if t is not type(None)]
    if allowed == [int]:
        return int
    if allowed == [float]:
        return float
    if set(allowed) == {int, str}:
        return lambda text: int(text) if text.lstrip("-").isdigit() else text
    return str


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("negate"):
        return ""
    if f.default is None or f.default is False:
        return ""
    return f" (default: {f.default})"


def add_settings(
    parser: argparse.ArgumentParser,
    section: type[Settings],
    title: str,
    only: Iterable[str] | None = None,
) -> None:
    """Flags for the section's fields (only the named ones, if given) in a group of their own."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(section)
    wanted = set(only) if only is not None else None
    for f in setting_fields(section):
        if not f.metadata.get("cli", True) or (wanted is not None and f.name not in wanted):
            continue
        helptext = f.metadata["help"] + _default_text(f)
        kwargs: dict[str, Any] = {
            "dest": key_of(f),
            "default": argparse.SUPPRESS,
            "help": f"turn off {helptext} (on by default)" if f.metadata.get("negate") else helptext,
        }
        if hints[f.name] is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _value_parser(hints[f.name])
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
        group.add_argument(flag_of(f), **kwargs)


def add_preset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a bundle of settings: real = quantile forecasts for real markets (see README); a --config file and "
        "flags override it",
    )


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help='JSON or TOML of settings (sections like {"model": {"seq_len": 256}}, section.field keys or flag '
        "names with _ for -; e.g. the best_params.json of `pumpcast tune`); flags on the command line win",
    )


def to_config(ns: argparse.Namespace, sections: Mapping[str, type[Settings]]) -> dict[str, Settings]:
    """The namespace as config objects, once: defaults, then the --preset, then the --config file, then the
    flags given."""
    objects: dict[str, Settings] = {name: cls() for name, cls in sections.items()}
    preset = getattr(ns, "preset", None)
    if preset:
        objects = with_values(objects, {k: v for k, v in PRESETS[preset].items() if k in objects})
    path = getattr(ns, "config", None)
    if path:
        objects = with_values(objects, read_config_file(path), where=str(path))
    keys = {key_of(f) for cls in sections.values() for f in setting_fields(cls)}
    given = {k: v for k, v in vars(ns).items() if k in keys}
    return with_values(objects, given)


def flag_message(exc: ConfigError, sections: Iterable[type[Settings]]) -> str:
    """A library message with the fields it names spelled as their flags (`embed_size` -> `--embed-size`)."""
    flags = {f.name: flag_of(f) for cls in sections for f in setting_fields(cls) if f.metadata.get("cli", True)}
    msg = str(exc)
    for name in exc.fields:
        if name in flags:
            msg = re.sub(rf"(?<![\w.-]){re.escape(name)}\b", flags[name], msg)
    return msg
