"""``-k EXPR``: pick combinations by name, as pytest's ``-k`` does.

EXPR is words joined with ``and``, ``or``, ``not`` and parentheses; a word matches
a combination whose name contains it (case-insensitive). ``-k q4`` picks every
combination with a 4-queue disk, ``-k "poll and not group"`` the poll ones plugged alone.
"""

from __future__ import annotations

import re

from ..errors import UsageError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
_OPS = {"and", "or", "not"}


def _tokens(expr: str) -> list[str]:
    pos, out = 0, []
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            break
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, expr: str, name: str):
        self.expr, self.name = expr, name.lower()
        self.toks = _tokens(expr)
        self.i = 0

    def fail(self, why: str) -> UsageError:
        return UsageError(f"-k {self.expr!r}: {why}")

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.fail("ends too early")
        self.i += 1
        return tok

    def parse(self) -> bool:
        if not self.toks:
            raise self.fail("is empty")
        value = self.or_()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r}")
        return value

    def or_(self) -> bool:
        value = self.and_()
        while self.peek() == "or":
            self.take()
            rhs = self.and_()
            value = value or rhs
        return value

    def and_(self) -> bool:
        value = self.not_()
        while self.peek() == "and":
            self.take()
            rhs = self.not_()
            value = value and rhs
        return value

    def not_(self) -> bool:
        if self.peek() == "not":
            self.take()
            return not self.not_()
        return self.atom()

    def atom(self) -> bool:
        tok = self.take()
        if tok == "(":
            value = self.or_()
            if self.take() != ")":
                raise self.fail("missing ')'")
            return value
        if tok in _OPS or tok == ")":
            raise self.fail(f"unexpected {tok!r}")
        return tok.lower() in self.name


def matches(expr: str | None, name: str) -> bool:
    """True if combination ``name`` is selected by ``expr`` (None selects everything)."""
    if expr is None:
        return True
    return _Parser(expr, name).parse()
