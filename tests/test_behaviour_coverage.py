"""The graphile-worker behaviour ids (tests/behaviours.toml) against the tests that cover
them: every id marked covered has a test carrying ``@pytest.mark.gw(...)``, and no
marker names an id the ledger doesn't know. No database."""

from __future__ import annotations

import ast
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
LEDGER = TESTS / "behaviours.toml"
DOCS = TESTS.parent / "docs" / "graphile-worker.md"
# The shared reference lives beside the project checkout in development; a CI checkout
# has no such sibling, and the ledger, which copies the ids, stands on its own there.
REFERENCE = TESTS.parent.parent / "shared" / "reference" / "graphile-worker-tests.md"

STATUSES = ("covered", "partial", "missing", "not_applicable")
ID = r"(?:HAR|MIG|ADD|AJ|Q|F|FL|BJ|FF|ADM|LR|CRP|CRS|LQ|SH|EV|WU|E|EDGE|RS|CLI)-\d{2}"
REFERENCE_ENTRY = re.compile(rf"^- \*\*({ID})\b", re.MULTILINE)
# Tests written before the marker existed may name their ids in the docstring instead:
# "Covers CRP-05, CRP-28." counts as @pytest.mark.gw("CRP-05", "CRP-28"), and
# "Covers CRP-14 to CRP-16" as CRP-14, CRP-15 and CRP-16.
DOCSTRING_COVERS = re.compile(rf"\bCovers ({ID}(?:(?:,\s*|,?\s+and\s+|\s+to\s+){ID})*)")
ID_RANGE = re.compile(rf"({ID})\s+to\s+({ID})")


@dataclass(frozen=True)
class Entry:
    """One ledger row: a behaviour id, its status and, unless covered, why."""

    id: str
    status: str
    note: str


def load_ledger(path: Path = LEDGER) -> tuple[dict[str, Entry], int]:
    """The ledger's entries in file order, and its floor for the number covered."""
    data = tomllib.loads(path.read_text())
    entries: dict[str, Entry] = {}
    for key, value in data["behaviours"].items():
        if isinstance(value, str):
            entries[key] = Entry(key, value, "")
        else:
            entries[key] = Entry(key, value["status"], value.get("note", ""))
    return entries, int(data["covered_at_least"])


def _is_gw_marker(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "gw"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "mark"
    )


def _marker_ids(node: ast.AST, where: str) -> list[str]:
    """The ids of every ``pytest.mark.gw(...)`` call inside ``node``."""
    ids = []
    for call in ast.walk(node):
        if _is_gw_marker(call):
            assert isinstance(call, ast.Call)
            for arg in call.args:
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    raise AssertionError(f"{where}: gw() takes string literals only")
                ids.append(arg.value)
    return ids


def _expand_ranges(text: str) -> list[str]:
    """The ids of a docstring's "Covers ..." list, "A-01 to A-03" spelled out."""
    for first, last in ID_RANGE.findall(text):
        prefix, start = first.rsplit("-", 1)
        end_prefix, end = last.rsplit("-", 1)
        if prefix != end_prefix or int(start) >= int(end):
            raise AssertionError(f"a docstring names a bad range: {first} to {last}")
        spelled = ", ".join(f"{prefix}-{n:02d}" for n in range(int(start), int(end) + 1))
        text = text.replace(f"{first} to {last}", spelled)
    return re.findall(ID, text)


def _collect_from(scope: list[ast.stmt], where: str, found: dict[str, list[str]]) -> None:
    for node in scope:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            for marker_id in _marker_ids(node.value, where):
                found.setdefault(marker_id, []).append(f"{where} (pytestmark)")
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            name = f"{where}::{node.name}"
            for decorator in node.decorator_list:
                for marker_id in _marker_ids(decorator, name):
                    found.setdefault(marker_id, []).append(name)
            _collect_from(node.body, name, found)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            name = f"{where}::{node.name}"
            ids = [i for d in node.decorator_list for i in _marker_ids(d, name)]
            docstring = ast.get_docstring(node) or ""
            for match in DOCSTRING_COVERS.finditer(" ".join(docstring.split())):
                ids.extend(_expand_ranges(match.group(1)))
            for marker_id in ids:
                found.setdefault(marker_id, []).append(name)


def collect_markers(tests: Path = TESTS) -> dict[str, list[str]]:
    """Each behaviour id named by a test's gw marker (or "Covers" docstring), with the
    tests naming it. Read from the source, so nothing is imported or collected."""
    found: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        if "node_modules" in path.parts:
            continue
        where = str(path.relative_to(tests))
        _collect_from(ast.parse(path.read_text(), str(path)).body, where, found)
    return found


LEDGER_ENTRIES, COVERED_AT_LEAST = load_ledger()


def test_ledger_rows_are_well_formed() -> None:
    for entry in LEDGER_ENTRIES.values():
        assert re.fullmatch(ID, entry.id), entry
        assert entry.status in STATUSES, entry
        if entry.status != "covered":
            assert entry.note.strip(), f"{entry.id} is {entry.status}: say why in its note"


def test_ledger_lists_the_references_ids_in_order() -> None:
    if not REFERENCE.exists():
        pytest.skip(
            f"{REFERENCE} is absent (a checkout without the shared reference beside it); "
            "the ledger's own ids are checked against the markers without it"
        )
    reference_ids = REFERENCE_ENTRY.findall(REFERENCE.read_text())
    assert len(reference_ids) == len(set(reference_ids))
    missing = [i for i in reference_ids if i not in LEDGER_ENTRIES]
    extra = [i for i in LEDGER_ENTRIES if i not in reference_ids]
    assert not missing, f"ids of the reference missing from the ledger: {missing}"
    assert not extra, f"ids in the ledger that the reference doesn't have: {extra}"
    assert list(LEDGER_ENTRIES) == reference_ids


def test_markers_name_only_known_ids() -> None:
    unknown = {i: tests for i, tests in collect_markers().items() if i not in LEDGER_ENTRIES}
    assert not unknown, f"gw markers naming ids the ledger doesn't list: {unknown}"


def test_every_covered_id_has_a_test() -> None:
    marked = collect_markers()
    uncovered = [
        e.id for e in LEDGER_ENTRIES.values() if e.status == "covered" and e.id not in marked
    ]
    assert not uncovered, f"ids marked covered that no test carries any more: {uncovered}"


def test_marked_ids_are_covered_or_partial() -> None:
    marked = collect_markers()
    wrong = {
        e.id: (e.status, marked[e.id])
        for e in LEDGER_ENTRIES.values()
        if e.id in marked and e.status in ("missing", "not_applicable")
    }
    assert not wrong, f"ids with a test but a ledger status that says there is none: {wrong}"


def test_the_covered_count_does_not_drop(capsys: pytest.CaptureFixture[str]) -> None:
    counts = Counter(e.status for e in LEDGER_ENTRIES.values())
    marked = collect_markers()
    with capsys.disabled():
        print(
            f"\nbehaviour ids: {len(LEDGER_ENTRIES)}; "
            + ", ".join(f"{s} {counts[s]}" for s in STATUSES)
            + f"; {sum(len(t) for t in marked.values())} markers on tests"
        )
    assert counts["covered"] >= COVERED_AT_LEAST, (
        f"{counts['covered']} ids covered, fewer than the ledger's floor {COVERED_AT_LEAST}"
    )


def test_the_docs_give_the_ledgers_counts() -> None:
    counts = Counter(e.status for e in LEDGER_ENTRIES.values())
    row = "| " + " | ".join(str(counts[s]) for s in STATUSES) + " |"
    assert row in DOCS.read_text(), f"docs/graphile-worker.md should show the counts {row}"


def test_the_collector_reads_decorators_pytestmark_and_docstrings(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        'pytestmark = [pytest.mark.gw("MIG-01")]\n'
        '@pytest.mark.gw("ADD-01", "ADD-02")\n'
        "def test_a(): pass\n"
        "class TestB:\n"
        '    @pytest.mark.gw("Q-01")\n'
        "    def test_c(self): pass\n"
        "def test_d():\n"
        '    """Covers CRP-05, CRP-28 and E-03; Covers LQ-01 to LQ-03."""\n'
        '@pytest.mark.gw("F-01")\n'
        "def helper(): pass\n"
    )
    found = collect_markers(tmp_path)
    assert sorted(found) == [
        "ADD-01", "ADD-02", "CRP-05", "CRP-28", "E-03", "LQ-01", "LQ-02", "LQ-03", "MIG-01", "Q-01",
    ]  # fmt: skip
    assert found["Q-01"] == ["test_sample.py::TestB::test_c"]
