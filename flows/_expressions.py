"""The expression language of declarative workflows: small, safe, no ``eval``.

Grammar (``${...}`` inside strings, bare in ``if`` / ``when`` / ``cases``)::

    expr  := or
    or    := and ("or" and)*
    and   := not ("and" not)*
    not   := "not" not | cmp
    cmp   := atom (("==" | "!=" | "<" | "<=" | ">" | ">=") atom)?
    atom  := number | 'string' | "string" | true | false | null | path | "(" expr ")"
    path  := name ("." name | "[" integer "]")*

Paths read ``inputs.x``, ``steps.<id>.outputs.y`` and ``event.z``. A path that
does not resolve is ``null``. No function calls, no attribute access on objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\.)|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))"
)
_KEYWORDS = {"and", "or", "not", "true", "false", "null"}
_EMBED = re.compile(r"\$\{(.*?)\}")


class ExpressionError(ValueError):
    """A syntax error in an expression (with the offending text).

    Internal: spec validation reports it as a ``SpecInvalid`` problem at the
    expression's file:line:column, so it is not in the MainspringError tree.
    """


@dataclass(frozen=True)
class Path:
    parts: tuple[str | int, ...]

    @property
    def root(self) -> str:
        return str(self.parts[0])


@dataclass(frozen=True)
class Node:
    op: str
    args: tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"unexpected {text[pos:].strip()[:20]!r} in {text!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            want = f"{value!r}" if value else "more"
            raise ExpressionError(f"expected {want} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        node = self.or_()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r} in {self.text!r}")  # type: ignore[index]
        return node

    def or_(self) -> Any:
        node = self.and_()
        while self.peek() == ("name", "or"):
            self.take()
            node = Node("or", (node, self.and_()))
        return node

    def and_(self) -> Any:
        node = self.not_()
        while self.peek() == ("name", "and"):
            self.take()
            node = Node("and", (node, self.not_()))
        return node

    def not_(self) -> Any:
        if self.peek() == ("name", "not"):
            self.take()
            return Node("not", (self.not_(),))
        return self.cmp()

    def cmp(self) -> Any:
        left = self.atom()
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return Node(tok[1], (left, self.atom()))
        return left

    def atom(self) -> Any:
        kind, value = self.take()
        if kind == "num":
            return float(value) if "." in value else int(value)
        if kind == "str":
            return bytes(value[1:-1], "utf-8").decode("unicode_escape")
        if kind == "op" and value == "(":
            node = self.or_()
            self.take(")")
            return node
        if kind == "name":
            if value in ("true", "false"):
                return value == "true"
            if value == "null":
                return None
            if value in _KEYWORDS:
                raise ExpressionError(f"unexpected {value!r} in {self.text!r}")
            parts: list[str | int] = [value]
            while self.peek() in (("op", "."), ("op", "[")):
                if self.take()[1] == ".":
                    parts.append(self.take()[1])
                else:
                    parts.append(int(self.take()[1]))
                    self.take("]")
            return Path(tuple(parts))
        raise ExpressionError(f"unexpected {value!r} in {self.text!r}")


def parse(text: str) -> Any:
    """Parse an expression (without ``${}``); raises ``ExpressionError``."""
    return _Parser(text.strip()).parse()


def unwrap(text: str) -> str:
    """``${x}`` -> ``x``; a bare expression is returned as it is."""
    stripped = text.strip()
    m = _EMBED.fullmatch(stripped)
    return m.group(1) if m else stripped


def paths(node: Any) -> list[Path]:
    if isinstance(node, Path):
        return [node]
    if isinstance(node, Node):
        return [p for arg in node.args for p in paths(arg)]
    return []


def embedded(text: str) -> list[str]:
    """The expressions inside ``${...}`` of a template string."""
    return _EMBED.findall(text)


def evaluate(node: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, Path):
        value: Any = scope
        for part in node.parts:
            if (
                isinstance(part, int)
                and isinstance(value, list)
                and -len(value) <= part < len(value)
            ):
                value = value[part]
            elif isinstance(part, str) and isinstance(value, Mapping):
                value = value.get(part)
            else:
                return None
        return value
    if not isinstance(node, Node):
        return node
    if node.op == "and":
        return truthy(evaluate(node.args[0], scope)) and truthy(evaluate(node.args[1], scope))
    if node.op == "or":
        return truthy(evaluate(node.args[0], scope)) or truthy(evaluate(node.args[1], scope))
    if node.op == "not":
        return not truthy(evaluate(node.args[0], scope))
    left, right = (evaluate(a, scope) for a in node.args)
    if node.op == "==":
        return bool(left == right)
    if node.op == "!=":
        return bool(left != right)
    try:
        return bool(
            {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[
                node.op
            ]
        )
    except TypeError:
        return False


def truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def condition(text: str | bool, scope: Mapping[str, Any]) -> bool:
    if isinstance(text, bool):
        return text
    return truthy(evaluate(parse(unwrap(text)), scope))


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Fill ``${...}`` in strings (recursively in lists and objects).

    A string that is exactly one ``${expr}`` becomes the expression's value (any
    JSON type); otherwise values are interpolated as text.
    """
    if isinstance(value, str):
        whole = _EMBED.fullmatch(value.strip())
        if whole:
            return evaluate(parse(whole.group(1)), scope)
        return _EMBED.sub(lambda m: _text(evaluate(parse(m.group(1)), scope)), value)
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    if isinstance(value, Mapping):
        return {k: render(v, scope) for k, v in value.items()}
    return value


def render_text(value: Any, scope: Mapping[str, Any]) -> str | None:
    """Fill ``${...}`` in a text meant for people (a prompt): always a string (None
    stays None), whatever type a lone ``${expr}`` has."""
    if value is None:
        return None
    return _text(render(value, scope))


def _text(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value)
