"""SQL safety: no statement in pgworker/ is built from strings (f-strings, %, .format,
+): identifiers go through psycopg.sql.Identifier, values as parameters."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pgworker"

#: Text that reads as a SQL statement (or a large part of one).
SQL_SHAPE = re.compile(
    r"\bselect\b[\s\S]*\bfrom\b|\binsert\s+into\b|\bupdate\s+\S+\s+set\b|\bdelete\s+from\b"
    r"|\b(create|drop|alter)\s+(or\s+replace\s+)?"
    r"(table|schema|function|index|view|type|role|database|extension|trigger|sequence)\b"
    r"|\bgrant\s+\w+[\s\S]*\bon\s|\btruncate\s+\w|\blisten\s+\S|\bnotify\s+\S|\bpg_notify\s*\("
    r"|\bwhere\s+\w+\s*(=|in\b|is\b)|\breturning\s+[\w*]",
    re.IGNORECASE,
)
#: Calls whose first argument is sent to the server as statement text.
SQL_SINKS = frozenset({"execute", "executemany", "copy", "stream", "SQL"})


class Finding(NamedTuple):
    """One place where SQL may be built from strings."""

    path: str  # relative to the package
    function: str  # the enclosing function (dotted), or <module>
    line: int
    rule: str
    source: str

    def key(self) -> tuple[str, str, str]:
        return (self.path, self.function, self.source)

    def __str__(self) -> str:
        return f"pgworker/{self.path}:{self.line} in {self.function}: {self.rule}: {self.source}"


#: Reviewed exceptions, each with its reason: (path, function, source) -> why it is safe.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("queries.py", "bind_names", "sql.SQL(pieces[0])"): (
        "the text of pgworker's own .sql files; the schema goes in as sql.Identifier"
    ),
    ("queries.py", "bind_names", "sql.SQL(piece)"): (
        "the text of pgworker's own .sql files; the schema goes in as sql.Identifier"
    ),
}


def _constant_text(node: ast.AST) -> str | None:
    """The constant text of a string built at run time, or None if ``node`` is not one:
    an f-string with a placeholder, ``"..." % x``, ``"...".format(x)``, ``"..." + x``,
    ``"...".join(x)``, ``x.replace(...)``."""
    if isinstance(node, ast.JoinedStr):
        if not any(isinstance(value, ast.FormattedValue) for value in node.values):
            return None
        # Each placeholder reads as "{}", so "update {table} set" keeps its shape.
        return "".join(
            value.value if isinstance(value, ast.Constant) else "{}" for value in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        left = node.left
        if isinstance(left, ast.Constant) and isinstance(left.value, str):
            return left.value
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts: list[str] = []
        for operand in _flatten_add(node):
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                parts.append(operand.value)
            else:
                parts.append(_constant_text(operand) or "{}")
        return "".join(parts) if any(part != "{}" for part in parts) else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        receiver = node.func.value
        if node.func.attr in {"format", "join"} and isinstance(receiver, ast.Constant):
            return str(receiver.value)
        if node.func.attr == "replace" and node.args:
            return ""
    return None


def _flatten_add(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _flatten_add(node.left) + _flatten_add(node.right)
    return [node]


def _sink_name(call: ast.Call) -> str | None:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name if name in SQL_SINKS else None


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self.scope: list[str] = []
        #: Names assigned a string built at run time, per enclosing function.
        self.built_names: list[set[str]] = [set()]
        self.findings: list[Finding] = []

    def _add(self, node: ast.AST, rule: str) -> None:
        segment = ast.get_source_segment(self.source, node) or ""
        self.findings.append(
            Finding(
                self.path,
                ".".join(self.scope) or "<module>",
                getattr(node, "lineno", 0),
                rule,
                " ".join(segment.split()),
            )
        )

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.built_names.append(set())
        self.generic_visit(node)
        self.built_names.pop()
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_ClassDef = _function

    def visit_Assign(self, node: ast.Assign) -> None:
        if _constant_text(node.value) is not None:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.built_names[-1].add(target.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        sink = _sink_name(node)
        if sink is not None and node.args:
            first = node.args[0]
            if _constant_text(first) is not None:
                self._add(node, f"{sink}() of a string built at run time")
            elif isinstance(first, ast.Name) and first.id in self.built_names[-1]:
                self._add(node, f"{sink}() of {first.id}, a string built at run time")
            elif sink == "SQL" and not (
                isinstance(first, ast.Constant) and isinstance(first.value, str)
            ):
                self._add(node, "sql.SQL() of text that is not a literal")
        self.generic_visit(node)

    def _built(self, node: ast.AST) -> None:
        text = _constant_text(node)
        if text and SQL_SHAPE.search(text):
            self._add(node, "SQL text built with string formatting")

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._built(node)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self._built(node)
        self.generic_visit(node)


def scan_source(source: str, path: str = "<snippet>") -> list[Finding]:
    """The places in ``source`` where SQL may be built from strings."""
    scanner = _Scanner(path, source)
    scanner.visit(ast.parse(source))
    return scanner.findings


def scan_package() -> list[Finding]:
    """The findings of every module of pgworker/."""
    findings: list[Finding] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        path = file.relative_to(PACKAGE).as_posix()
        findings += scan_source(file.read_text(encoding="utf-8"), path)
    return findings


def test_the_package_builds_no_sql_from_strings() -> None:
    findings = scan_package()
    unexplained = [str(f) for f in findings if f.key() not in ALLOWED]
    assert unexplained == [], (
        "SQL built from strings: use a named statement in pgworker/sql/*.sql with "
        "parameters, psycopg.sql.Identifier for names, or add a reviewed entry with its "
        "reason to ALLOWED:\n" + "\n".join(unexplained)
    )


def test_every_allowed_entry_is_still_there() -> None:
    """A stale entry would silently allow a future line with the same text."""
    found = {f.key() for f in scan_package()}
    assert [key for key in ALLOWED if key not in found] == []
    assert all(reason.strip() for reason in ALLOWED.values())


@pytest.mark.parametrize(
    "snippet",
    [
        'conn.execute(f"select * from jobs where id = {job_id}")',
        'conn.execute("select * from jobs where id = %s" % job_id)',
        'conn.execute("select * from jobs where id = {}".format(job_id))',
        'conn.execute("select * from jobs where id = " + str(job_id))',
        'cur.executemany(f"insert into {table} values (%s)", rows)',
        "conn.execute(f'drop schema \"{schema}\" cascade')",
        "def f(conn, name):\n    query = f'{name}'\n    conn.execute(query)",
        "def f(conn, name):\n    query = 'listen ' + name\n    conn.execute(query)",
        "conn.execute(text.replace(':SCHEMA', schema))",
        "conn.execute(sql.SQL(f'select {column} from t'))",
        "statement = f'update {table} set a = 1'",
        "statement = 'delete from ' + table",
        'query = "select %s from jobs" % column',
    ],
)
def test_the_scan_catches_sql_built_from_strings(snippet: str) -> None:
    assert scan_source(snippet), f"not caught: {snippet}"


@pytest.mark.parametrize(
    "snippet",
    [
        'conn.execute("select * from jobs where id = %(id)s", {"id": job_id})',
        "conn.execute(self.queries['add_job'], params)",
        "conn.execute(sql.SQL('drop schema {} cascade').format(sql.Identifier(name)))",
        'message = f"the worker schema {schema!r} is not installed: run pgworker migrate"',
        'raise MigrationError(f"migrating schema {schema!r} failed: {exc}")',
    ],
)
def test_the_scan_lets_parameters_identifiers_and_messages_pass(snippet: str) -> None:
    assert scan_source(snippet) == []
