"""The built-in ``cli`` handler's allow-list: which programs it may run.

A command line runs only if it is a plain command (a program and its arguments, quoted
as a shell would quote them, with no shell syntax) whose program is on the list; it is
then run directly, without a shell, so nothing interpolated into it (a run's input, a
model's answer) can turn it into another command. A line with shell syntax (``;``,
``|``, ``&&``, ``$``, globs, redirections ...) runs only if the shell itself is on the
list, which allows every command: say so on purpose. ``*`` allows everything.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterable, Sequence

from schemas import ConfigError, ErrorCode, TerminalError

ANY = "*"
SIMPLE_SHELLS = ("bash", "sh")
"""shells whose plain command lines are run directly (a shell would run them the same)"""
_SHELL_CHARS = frozenset(";&|<>()$`*?[]{}~#\n\r")
"""characters outside quotes that make a line shell syntax (some only sometimes: the
check errs on the side of needing the shell)"""
_QUOTED_SHELL_CHARS = frozenset("$`\\")
"""characters a shell still expands inside double quotes"""
_RESERVED = frozenset(
    [
        "!",
        "[[",
        "{",
        "case",
        "coproc",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "function",
        "if",
        "in",
        "select",
        "then",
        "time",
        "until",
        "while",
    ]
)
_LOADER_ENV = ("PATH", "LD_", "DYLD_")
"""request environment names that would change which code an allowed program runs"""


def shell_syntax(line: str) -> str | None:
    """What in ``line`` a shell would treat as syntax rather than words (None: nothing,
    the line is a plain command)."""
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif quote == '"':
            if ch == '"':
                quote = ""
            elif ch in _QUOTED_SHELL_CHARS:
                return f"{ch!r} inside double quotes"
        elif ch in "'\"":
            quote = ch
        elif ch == "\\":
            i += 1  # an escaped character is a literal
        elif ch in _SHELL_CHARS:
            return repr(ch)
        i += 1
    if quote:
        return f"an unclosed {quote} quote"
    words = shlex.split(line)
    if not words:
        return "an empty command"
    if words[0] in _RESERVED or "=" in words[0]:
        return f"{words[0]!r} at the start"
    return None


class CliAllow:
    """The programs a ``cli`` handler may run, resolved on this host when it starts."""

    def __init__(self, entries: str | Iterable[str]) -> None:
        listed = [entries] if isinstance(entries, str) else entries
        names = [e.strip() for entry in listed for e in entry.split(",") if e.strip()]
        if not names:
            raise ConfigError(
                "the cli handler needs an allow-list: name the programs it may run "
                "(--cli-allow git,python3), or '*' for any command"
            )
        self.any = ANY in names
        self.names = tuple(names)
        self.paths = frozenset(_resolve_allowed(n) for n in names if n != ANY)

    def __repr__(self) -> str:
        return f"CliAllow({', '.join(self.names)})"

    def commands(
        self, lines: Sequence[str], shell: str, env: dict[str, str], cwd: str | None
    ) -> list[list[str]] | None:
        """The argv of each line, to run one after another (as ``&&`` would); None when
        the lines need the shell (and it is allowed). Raises a TerminalError
        (``cli.refused``) saying what is not allowed."""
        if self.any:
            return None
        for name in env:
            if any(name == p or (p.endswith("_") and name.startswith(p)) for p in _LOADER_ENV):
                raise _refused(
                    f"the request sets {name} in the command's environment, which would "
                    "change which program runs; an allow-list does not permit that"
                )
        syntax = (
            next((s for s in map(shell_syntax, lines) if s), None)
            if shell in SIMPLE_SHELLS
            else f"a {shell} command line"
        )
        if syntax is None:
            return [self._argv(shlex.split(line), cwd) for line in lines]
        shell_path = shutil.which(shell)
        if shell_path is not None and os.path.normpath(shell_path) in self.paths:
            return None
        shown = " && ".join(lines)
        raise _refused(
            f"{shown[:200]!r} uses shell syntax ({syntax}); this cli handler runs only "
            f"plain commands of the programs it allows ({', '.join(self.names)}), unless "
            f"the shell {shell!r} itself is allowed, which allows every command"
        )

    def _argv(self, words: list[str], cwd: str | None) -> list[str]:
        program = words[0]
        if os.sep in program:
            path = os.path.normpath(os.path.join(cwd or os.getcwd(), program))
        else:
            found = shutil.which(program)  # the handler's PATH, never the request's
            path = os.path.normpath(found) if found else program
        if path not in self.paths:
            raise _refused(
                f"program {program!r} is not on this cli handler's allow-list "
                f"({', '.join(self.names)}); start the handler with --cli-allow naming it"
            )
        return [path, *words[1:]]


def _resolve_allowed(name: str) -> str:
    if os.sep in name:
        path = os.path.abspath(name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigError(f"--cli-allow {name}: no executable file there")
        return os.path.normpath(path)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"--cli-allow {name}: no program of that name on this handler's PATH; "
            "install it or give its path"
        )
    return os.path.normpath(found)


def _refused(message: str) -> TerminalError:
    return TerminalError(message, type=ErrorCode.CLI_REFUSED)
