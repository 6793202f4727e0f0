"""Checks on the test suite itself: every test asserts something."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
#: pytest helpers that check by themselves (``with pytest.raises(...)``, ``pytest.fail``).
PYTEST_CHECKS = {"raises", "warns", "deprecated_call", "fail"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _defs(body: list[ast.stmt]) -> list[Function]:
    return [node for node in body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def _methods(tree: ast.Module) -> list[Function]:
    return [f for node in tree.body if isinstance(node, ast.ClassDef) for f in _defs(node.body)]


def _own_nodes(function: Function) -> Iterator[ast.AST]:
    """The nodes of ``function``'s body, not of the functions defined in it (an assert
    in a task fails the job, not the test)."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))


def _checks(function: Function, functions: set[str], methods: set[str]) -> bool:
    """True if ``function`` asserts, uses a pytest check, or calls a function named in
    ``functions`` or a method named in ``methods`` (the helpers that check)."""
    for node in _own_nodes(function):
        if isinstance(node, ast.Assert):
            return True
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in functions:
            return True
        if isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "pytest":
                if node.func.attr in PYTEST_CHECKS:
                    return True
            elif node.func.attr in methods:
                return True
    return False


class Suite:
    """The test modules of a directory, and the names of their helpers that check:
    module-level functions and methods of module-level classes (functions nested in a
    test, such as its tasks, are not helpers), checking directly or through another."""

    def __init__(self, directory: Path) -> None:
        self.trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(directory.glob("*.py"))}
        functions = [f for tree in self.trees.values() for f in _defs(tree.body) if not _is_test(f)]
        methods = [f for tree in self.trees.values() for f in _methods(tree) if not _is_test(f)]
        self.functions: set[str] = set()
        self.methods: set[str] = set()
        while True:
            new_functions = {
                f.name
                for f in functions
                if f.name not in self.functions and _checks(f, self.functions, self.methods)
            }
            new_methods = {
                f.name
                for f in methods
                if f.name not in self.methods and _checks(f, self.functions, self.methods)
            }
            if not new_functions and not new_methods:
                break
            self.functions |= new_functions
            self.methods |= new_methods

    def tests(self) -> Iterator[tuple[Path, Function]]:
        """Every test function, in modules and in test classes."""
        for path, tree in self.trees.items():
            if path.name.startswith("test_"):
                for function in [*_defs(tree.body), *_methods(tree)]:
                    if _is_test(function):
                        yield path, function

    def tests_without_a_check(self) -> list[str]:
        """``file:line name`` of each test that checks nothing."""
        return [
            f"{path.name}:{test.lineno} {test.name}"
            for path, test in self.tests()
            if not _checks(test, self.functions, self.methods)
        ]


def _is_test(function: Function) -> bool:
    return function.name.startswith("test_")


#: Table-driven tests whose checks are callables in their table, which the scan can't
#: follow: ``file name`` and where the asserts are.
TABLE_DRIVEN = {
    "test_bad_input.py test_bad_input": "each Case's check function asserts",
}


def test_every_test_asserts_something() -> None:
    suite = Suite(TESTS_DIR)
    assert len(list(suite.tests())) > 250
    tests = {f"{path.name} {test.name}" for path, test in suite.tests()}
    assert set(TABLE_DRIVEN) <= tests  # no exemption outlives its test
    missing = [
        where
        for where in suite.tests_without_a_check()
        if f"{where.split(':')[0]} {where.split()[-1]}" not in TABLE_DRIVEN
    ]
    assert missing == []


SAMPLE = """
def helper():
    assert 1

class Box:
    def check(self):
        helper()

def test_bare():
    helper

def test_helper():
    helper()

def test_method(box):
    box.check()

def test_raises():
    with pytest.raises(E):
        f()

def test_only_its_task_asserts(app):
    def task():
        assert 1
    app.task(task)

class TestGroup:
    def test_nothing(self):
        print(1)
"""


def test_the_check_finds_a_test_without_an_assertion(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    assert Suite(tmp_path).tests_without_a_check() == [
        "test_sample.py:9 test_bare",
        "test_sample.py:22 test_only_its_task_asserts",
        "test_sample.py:28 test_nothing",
    ]
