"""Command-line flags generated from config dataclasses: the dataclass is the single source of every flag's
name, type, default, choices and help.

A field ``batch_size: int = 256   # the global batch`` becomes ``--batch-size BATCH_SIZE`` with that comment as
its help and ``(default: 256)`` appended; a comment line of its own inside the class (``# data``) starts a group
of flags; a ``Literal["a", "b"]`` annotation gives the choices; a bool becomes ``--x`` / ``--no-x``. A comment
continued on the next line (a comment-only line aligned with it) is joined. ::

    p = Parser(prog="python -m clipcore.x", description="...")
    add_config_flags(p, MyConfig)                                   # groups from the comment lines
    add_config_flags(p, reco.Config, prefix="reco", title="--method reco", suppress=True)

Parse errors raise :class:`~clipcore.errors.ConfigError` (one line under :func:`clipcore.errors.cli`, no usage
dump); ``-h`` prints the help.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Any, Literal, NoReturn

from clipcore.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse raising a ConfigError instead of printing the usage and exiting (the CLIs print it as one line),
    with help laid out wide enough that descriptions are not cut into slivers."""

    def __init__(self, **kw):
        kw.setdefault("formatter_class", lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=34, width=112))
        super().__init__(**kw)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (--help lists the flags)")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """(field -> its comment, field -> the group comment above it) from the source of dataclass ``cls``; empty
    when the source is unavailable (the flags then have no help text; nothing else changes)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}, {}
    names = {f.name for f in dataclasses.fields(cls)}
    lines = src.splitlines()
    helps: dict[str, str] = {}
    group_starts: list[tuple[int, str]] = []
    last, last_col = None, -1
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type != tokenize.COMMENT:
            continue
        (row, col), text = tok.start, tok.string.lstrip("#").strip()
        code = lines[row - 1][:col].strip()
        name = code.split(":", 1)[0].strip() if code else None
        if name in names:                                  # a field's trailing comment
            helps[name], last, last_col = text, name, col
        elif not code and last is not None and col == last_col:   # its continuation on the next line
            helps[last] += " " + text
        elif not code:                                     # a comment line of its own: a group title
            group_starts.append((row, text))
            last = None
    groups = {}
    for row, line in enumerate(lines, start=1):
        m = re.match(r"\s*(\w+)\s*:", line)
        if m and m.group(1) in names and m.group(1) not in groups:
            groups[m.group(1)] = next((g for r, g in reversed(group_starts) if r < row), "")
    return helps, groups


# the project's provenance tags in method configs, as a reader of --help needs them
TAGS = ((re.compile(r"\[PAPER\]"), "(the paper's choice)"),
        (re.compile(r"\[RECON:\s*([^\]]*)\]"), r"(not fixed by the paper: \1)"),
        (re.compile(r"\[RECON\]"), "(not fixed by the paper)"))


def plain(text: str) -> str:
    """A config comment as help text: provenance tags spelled out."""
    for pattern, words in TAGS:
        text = pattern.sub(words, text)
    return text


def _base_type(hint: Any) -> Any:
    """The flag's type from a field's annotation: ``int | None`` -> int, a Literal stays itself (its values are the
    choices), anything else that is not int, float or bool -> str."""
    if typing.get_origin(hint) is Literal:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1:                     # X | None
        return _base_type(args[0])
    return hint if hint in (int, float, bool) else str


def add_config_flags(p: argparse.ArgumentParser, cls: type, *, prefix: str = "", title: str | None = None,
                     description: str | None = None, suppress: bool = False, skip: tuple[str, ...] = (),
                     choices: dict[str, tuple] | None = None, aliases: dict[str, tuple[str, ...]] | None = None,
                     extra_help: dict[str, str] | None = None) -> None:
    """One flag per field of dataclass ``cls``: ``--{prefix}-{field}`` (``--{field}`` without prefix), dest
    ``{prefix}__{field}`` (``{field}``). ``title`` puts them all in one group, else the class's comment lines
    group them. ``suppress``: an unset flag leaves no attribute (so only flags the user gave come back).
    ``choices`` / ``aliases`` / ``extra_help`` per field name extend what the class says."""
    helps, groups = field_docs(cls)
    hints = typing.get_type_hints(cls)
    choices, aliases, extra_help = choices or {}, aliases or {}, extra_help or {}
    made: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        key = title if title is not None else groups.get(f.name, "")
        if key not in made:
            made[key] = p.add_argument_group(key.split(":")[0] if key else None, textwrap.fill(
                description, 108) if description and title else None)
        g = made[key]
        flag = "--" + "-".join(filter(None, (prefix, f.name.replace("_", "-"))))
        dest = f"{prefix}__{f.name}" if prefix else f.name
        text = plain(" ".join(filter(None, (helps.get(f.name, ""), extra_help.get(f.name, "")))))
        if default is not None and not isinstance(default, bool) and default != "":
            text += f" (default: {default})"
        elif isinstance(default, bool):
            text += f" (default: {'on' if default else 'off'})"
        kw: dict[str, Any] = dict(dest=dest, help=text.replace("%", "%%").strip() or None,
                                  default=argparse.SUPPRESS if suppress else default)
        typ = _base_type(hints.get(f.name, str))
        if isinstance(default, bool) or typ is bool:
            g.add_argument(flag, *aliases.get(f.name, ()), action=argparse.BooleanOptionalAction, **kw)
            continue
        allowed = choices.get(f.name) or (typing.get_args(typ) if typing.get_origin(typ) is Literal else None)
        if allowed:
            kw["choices"] = tuple(allowed)
            kw["type"] = type(allowed[0])
        else:
            kw["type"] = typ if typ in (int, float) else str
            kw["metavar"] = f.name.upper()
        g.add_argument(flag, *aliases.get(f.name, ()), **kw)
