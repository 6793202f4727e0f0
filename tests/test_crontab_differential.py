"""pgworker's crontab parser against Node graphile-worker's own parseCrontab, line by line.

Thousands of crontab lines, valid and invalid, made by a seeded generator, go through
graphile-worker 0.17.3 (tests/interop/node/parse_crontab.js, one node process for the
batch) and through pgworker's parse_crontab. Both must accept and refuse the same
lines; for accepted lines, the task, identifier, options, payload and the five parsed
sets must agree, and so must the matching: each side's own match function is asked
about every day of a leap year, and for a sample of lines about every minute of it
(Node calls its match function on all 527,040 minutes; pgworker walks next_after and
checks matches on each minute found).

Where pgworker differs on purpose, the generator marks the line and it is left out of
the comparison; test_deliberate_differences checks each difference directly.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pgworker.crontab import CronItem, CrontabError, parse_crontab

pytestmark = pytest.mark.interop

NODE_DIR = Path(__file__).parent / "interop" / "node"
YEAR = 2024  # a leap year, so 29 February is matched too
YEAR_START = datetime(YEAR, 1, 1, tzinfo=UTC)
YEAR_END = datetime(YEAR + 1, 1, 1, tzinfo=UTC)
LINES = 3000
WALK_EVERY = 40  # every 40th line is also matched minute by minute over the year
WALK_LIMIT = 20_000  # pgworker walks lines with at most this many matches in the year

_node = shutil.which("node")
if _node is None:
    pytest.skip(
        "node is needed to compare with graphile-worker's parseCrontab", allow_module_level=True
    )

# The ways pgworker differs from graphile-worker on purpose; the generator tags a line
# with each one it uses, and such lines are not compared.
RANGE_STEP = "steps after a range or a number (A-B/S, N/S) are a pgworker extension"
SINGLE_RANGE = "a range of one value (5-5) is accepted by pgworker, refused by Node"
DOTTED_TASK = "task identifiers with dots: the crontab accepts what App.task accepts"
LONG_TASK = "task identifiers over 128 characters: refused as App.task refuses them"
SNAKE_OPTIONS = "job_key and job_key_mode, the Rust port's spellings, are accepted"
KEYLESS_MODE = "jobKeyMode without a jobKey is refused rather than ignored"
EMPTY_JOB_KEY = "an empty jobKey is refused as defer refuses it"
DB_RANGE = "max and priority outside the database's smallint range are refused at parse"
NON_FINITE = "NaN, Infinity and overflowing numbers in payloads are refused (Node stores null)"
ALL_DIFFERENCES = (RANGE_STEP, SINGLE_RANGE, DOTTED_TASK, LONG_TASK, SNAKE_OPTIONS)
ALL_DIFFERENCES += (KEYLESS_MODE, EMPTY_JOB_KEY, DB_RANGE, NON_FINITE)


@dataclass
class Line:
    """One generated crontab line and the deliberate differences it uses."""

    text: str
    differences: set[str] = field(default_factory=set)


class Generator:
    """Crontab lines from a seeded random source: most well formed, the others with one
    part (a field, the task, the options or the payload) likely broken."""

    FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
    PARTS = ("0", "1", "2", "3", "4", "task", "options", "payload", "shape")
    JUNK_TERMS = ("", "?", "L", "1-", "-1", "*/", "1//2", "**", "5W", "+5", "*-5", "1-2-3", "x")
    NAMES = ("JAN", "dec", "MON", "sun", "Fri")
    TASKS = ("simple", "send_email", "nested/task", "mail:send_one", "_private-x", "T9")
    BAD_TASKS = ("0task", "-x", "ta%sk", "é", "{a:1}", "?id=x", "a b")
    GOOD_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "id": ("stuff", "_a-b", "X1"),
        "fill": ("1d", "4w3d2h1m", "30m", "1h30m", "2s", "0m", "1w30d28h350m2s"),
        "max": ("1", "5", "25", "32767"),
        "queue": ("q", "my:queue", "a-b_c"),
        "jobKey": ("k", "a%20key+too", "x=y", "ü", "%F0%9F%98%80"),
        "jobKeyMode": ("replace", "preserve_run_at"),
        "priority": ("0", "3", "-4", "-32768"),
    }
    BAD_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "id": ("1abc", "a.b", "", "a%20b"),
        "fill": ("", "4w_3d", "1x", "d", "1d_"),
        "max": ("abc", "-1", "1.5", ""),
        "queue": ("a%20b", "", "q.x", "q/x"),
        "jobKeyMode": ("unsafe_dedupe", "REPLACE", ""),
        "priority": ("high", "1.5", "+3", ""),
        "unknown": ("3",),
        "JOBKEY": ("k",),
    }
    KEYS = ("a", "isTuesday", "$x", "_y", "null", "'single'", '"double"', "'sp ace'", "ä")
    VALUES = (
        "1", "-2", "0x1F", "+3", ".5", "5.", "1e3", "-0", "true", "false", "null",
        "'text'", '"text"', "'#1 # x'", '"\\u00e9"', "'a\\'b'", "[1, 'two', [3]]",
        "[1, 2,]", "{b: {c: null}}", "{}", "[]",
    )  # fmt: skip
    BAD_PAYLOADS = ("{invalidJson=true}", "{a: 1} x", "{a: 1 // c}", "{a}", "[1]", "{a: 1,,}")
    NON_FINITE_PAYLOADS = ("{a: NaN}", "{a: Infinity}", "{a: -Infinity}", "{a: 1e999}")

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.broken = ""

    def line(self) -> Line:
        """The next generated line."""
        r = self.random
        line = Line("")
        self.broken = r.choice(self.PARTS) if r.random() < 0.4 else ""
        if self.broken == "shape":
            line.text = r.choice(["@daily simple", "* * * * simple", "* * * * * * simple", ""])
            line.text = line.text or "* * * * * simple extra"
            return line
        fields = [self.field(line, i) for i in range(5)]
        command = self.command(line)
        separators = [r.choice([" ", " ", "  ", "\t"]) for _ in range(5)]
        line.text = "".join(f + s for f, s in zip(fields, separators, strict=True)) + command
        return line

    def field(self, line: Line, index: int) -> str:
        r = self.random
        if r.random() < 0.35 and self.broken != str(index):
            return "*"
        count = r.choice([1, 1, 1, 2, 3, 4])
        bad = r.randrange(count) if self.broken == str(index) else -1
        return ",".join(self.term(line, index, i == bad) for i in range(count))

    def term(self, line: Line, index: int, bad: bool) -> str:
        r = self.random
        low, high = self.FIELDS[index]
        top = 7 if index == 4 else high  # 7 is Sunday too
        if bad:
            roll = r.random()
            if roll < 0.2:
                a, b = sorted(r.sample(range(low, top + 1), 2))
                return f"{b}-{a}"
            if roll < 0.4:
                return r.choice([str(top + 1), str(low - 1) if low else "60", "99", "10" * 10])
            if roll < 0.55:
                return r.choice(self.NAMES)
            if roll < 0.65:
                return r.choice(["*/0", "*/00"])
            return r.choice(self.JUNK_TERMS)
        roll = r.random()
        if roll < 0.35:
            return str(r.randint(low, top))
        if roll < 0.6:
            a, b = sorted(r.sample(range(low, top + 1), 2))
            return f"{a}-{b}"
        if roll < 0.85:
            return f"*/{r.choice([1, 2, 3, 5, 7, 10, 15, high, high + 1, high + 2, 100])}"
        if roll < 0.98:
            return f"{r.choice(['0', '00'])}{r.randint(low, top)}"
        if roll < 0.99:
            line.differences.add(RANGE_STEP)
            start = r.randint(low, top)
            step = r.randint(0, 8)
            return (
                f"{start}-{r.randint(start, top)}/{step}" if r.random() < 0.5 else f"{start}/{step}"
            )
        line.differences.add(SINGLE_RANGE)
        value = r.randint(low, top)
        return f"{value}-{value}"

    def command(self, line: Line) -> str:
        r = self.random
        roll = r.random()
        if self.broken == "task":
            task = r.choice(self.BAD_TASKS)
        elif roll < 0.9:
            task = r.choice(self.TASKS)
        elif roll < 0.95:
            task = r.choice(["emails.send", "a.b/c", "_x.y"])
            line.differences.add(DOTTED_TASK)
        else:
            task = "t" * r.choice([128, 128, 129])
            if len(task) > 128:
                line.differences.add(LONG_TASK)
        parts = [task]
        if r.random() < 0.5 or self.broken == "options":
            parts.append("?" + self.options(line))
        if r.random() < 0.4 or self.broken == "payload":
            parts.append(self.payload(line))
        return r.choice([" ", "  ", "\t"]).join(parts)

    def options(self, line: Line) -> str:
        r = self.random
        names = r.sample(sorted(self.GOOD_OPTIONS), r.choice([1, 1, 2, 3, 4]))
        if "jobKeyMode" in names and "jobKey" not in names and r.random() < 0.8:
            names.append("jobKey")
        pairs = [(name, r.choice(self.GOOD_OPTIONS[name])) for name in names]
        if self.broken == "options":
            if r.random() < 0.15:
                pairs.append(pairs[0])  # a repeated option
            else:
                name = r.choice(sorted(self.BAD_OPTIONS))
                pairs.insert(r.randint(0, len(pairs)), (name, r.choice(self.BAD_OPTIONS[name])))
        elif r.random() < 0.1:
            pairs.append(
                r.choice([("job_key", "k"), ("job_key_mode", "replace"), ("jobKey", "")])
                if r.random() < 0.3
                else r.choice([("max", "0"), ("max", "40000"), ("priority", "40000")])
            )
        given = dict(pairs)
        if "job_key" in given or "job_key_mode" in given:
            line.differences.add(SNAKE_OPTIONS)
        if "jobKeyMode" in given and "jobKey" not in given:
            line.differences.add(KEYLESS_MODE)
        if given.get("jobKey") == "":
            line.differences.add(EMPTY_JOB_KEY)
        if given.get("max") in ("0", "40000") or given.get("priority") == "40000":
            line.differences.add(DB_RANGE)
        text = "&".join(f"{k}={v}" for k, v in pairs)
        return text + ("&" if r.random() < 0.05 else "")

    def payload(self, line: Line) -> str:
        r = self.random
        if self.broken == "payload":
            if r.random() < 0.2:
                line.differences.add(NON_FINITE)
                return r.choice(self.NON_FINITE_PAYLOADS)
            return r.choice(self.BAD_PAYLOADS)
        pairs = [
            f"{r.choice(self.KEYS)}:{r.choice(['', ' '])}{r.choice(self.VALUES)}"
            for _ in range(r.randint(0, 3))
        ]
        body = r.choice([",", ", "]).join(pairs)
        if pairs and r.random() < 0.2:
            body += ","
        if r.random() < 0.1:
            body += " /* note */"
        return "{" + body + "}"


def run_node(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Node's answer for each request, from one node process."""
    if not (NODE_DIR / "node_modules" / "graphile-worker").is_dir():
        pytest.fail(
            f"graphile-worker is not installed for the interop harness: run `npm ci` in {NODE_DIR}"
        )
    stdin = "".join(json.dumps(request) + "\n" for request in requests)
    done = subprocess.run(
        [_node or "node", "parse_crontab.js", str(YEAR)],
        cwd=NODE_DIR,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(text) for text in done.stdout.splitlines()]
    assert len(answers) == len(requests)
    return answers


def pgworker_parse(text: str) -> CronItem | str:
    """pgworker's item for the line, or its error message."""
    try:
        (item,) = parse_crontab(text)
    except CrontabError as exc:
        return str(exc)
    return item


def day_string(item: CronItem) -> str:
    """Like parse_crontab.js: whether each day of YEAR matches at the first minute and hour."""
    first = timedelta(hours=min(item.expression.hours), minutes=min(item.expression.minutes))
    days = (YEAR_END - YEAR_START).days
    return "".join(
        "1" if item.matches(YEAR_START + timedelta(days=d) + first) else "0" for d in range(days)
    )


def walk(item: CronItem) -> dict[str, Any]:
    """Every matching minute of YEAR by next_after, each confirmed by matches."""
    minutes: list[int] = []
    ts = item.expression.next_after(YEAR_START - timedelta(minutes=1))
    while ts is not None and ts < YEAR_END:
        assert item.matches(ts), ts
        minutes.append(int((ts - YEAR_START).total_seconds()) // 60)
        ts = item.expression.next_after(ts)
    return {
        "count": len(minutes),
        "sum": sum(minutes),
        "first": minutes[:50],
        "last": minutes[-50:],
    }


def compare(text: str, node: dict[str, Any], ours: CronItem | str) -> list[str]:
    """What differs between Node's answer and pgworker's for one line."""
    if not node["ok"] or isinstance(ours, str):
        if node["ok"] != isinstance(ours, CronItem):
            said = node.get("error") if not node["ok"] else ours
            return [f"{text!r}: Node {'accepts' if node['ok'] else 'refuses'}; other side: {said}"]
        return []
    (theirs,) = node["items"]
    options = theirs["options"]
    expression = ours.expression
    pairs = {
        "task": (theirs["task"], ours.task),
        "identifier": (theirs["identifier"], ours.identifier),
        "fill": (options["backfillPeriod"], ours.backfill_period / timedelta(milliseconds=1)),
        "max": (options.get("maxAttempts"), ours.max_attempts),
        "queue": (options.get("queueName"), ours.queue),
        "priority": (options.get("priority"), ours.priority),
        "jobKey": (options.get("jobKey"), ours.job_key),
        "jobKeyMode": (options.get("jobKeyMode"), ours.job_key_mode),
        "payload": (theirs["payload"], ours.payload),
        "minutes": (theirs["sets"]["minutes"], sorted(expression.minutes)),
        "hours": (theirs["sets"]["hours"], sorted(expression.hours)),
        "dates": (theirs["sets"]["dates"], sorted(expression.days)),
        "months": (theirs["sets"]["months"], sorted(expression.months)),
        "dows": (theirs["sets"]["dows"], sorted(expression.weekdays)),
        "days": (theirs["days"], day_string(ours)),
    }
    if "walk" in theirs:
        days = day_string(ours).count("1")
        count = days * len(expression.minutes) * len(expression.hours)
        pairs["walk count"] = (theirs["walk"]["count"], count)
        if theirs["walk"]["count"] <= WALK_LIMIT:
            pairs["walk"] = (theirs["walk"], walk(ours))
    return [f"{text!r}: {name} {a!r} != {b!r}" for name, (a, b) in pairs.items() if a != b]


def test_pgworker_and_graphile_worker_parse_the_same_lines_the_same_way() -> None:
    """Covers CRP-01 to CRP-19, CRP-22 to CRP-24, CRP-27 to CRP-32 (by generated lines)."""
    generator = Generator(seed=14)
    lines = [generator.line() for _ in range(LINES)]
    compared = [line for line in lines if not line.differences]
    answers = run_node(
        [{"line": line.text, "walk": i % WALK_EVERY == 0} for i, line in enumerate(compared)]
    )
    assert {d for line in lines for d in line.differences} == set(ALL_DIFFERENCES)
    problems: list[str] = []
    accepted = walked = 0
    for line, node in zip(compared, answers, strict=True):
        ours = pgworker_parse(line.text)
        problems += compare(line.text, node, ours)
        accepted += node["ok"]
        walked += "walk" in (node.get("items") or [{}])[0]
    assert not problems, f"{len(problems)} lines differ:\n" + "\n".join(problems[:30])
    # The comparison must not degenerate: enough lines compared, of both kinds.
    assert len(compared) >= LINES * 0.6, len(compared)
    assert accepted >= len(compared) * 0.3, accepted
    assert len(compared) - accepted >= len(compared) * 0.2
    assert walked >= 15, walked


# One line for each deliberate difference: (difference, line, Node accepts it).
# pgworker does the opposite of Node on each.
DIFFERENCES = [
    (RANGE_STEP, "10-30/10 5/6 * * 1-7/3 t", False),
    (SINGLE_RANGE, "5-5 * * * * t", False),
    (DOTTED_TASK, "* * * * * emails.send", False),
    (DOTTED_TASK, "0 4 * * * a.b/c ?id=daily {to: 'me'}", False),
    (LONG_TASK, "* * * * * " + "t" * 129, True),
    (SNAKE_OPTIONS, "* * * * * t ?job_key=k&job_key_mode=preserve_run_at", False),
    (KEYLESS_MODE, "* * * * * t ?jobKeyMode=preserve_run_at", True),
    (EMPTY_JOB_KEY, "* * * * * t ?jobKey=", True),
    (DB_RANGE, "* * * * * t ?max=0", True),
    (DB_RANGE, "* * * * * t ?max=40000", True),
    (DB_RANGE, "* * * * * t ?priority=40000", True),
    (NON_FINITE, "* * * * * t {a: NaN}", True),
    (NON_FINITE, "* * * * * t {a: -Infinity}", True),
    (NON_FINITE, "* * * * * t {a: 1e999}", True),
]


def test_deliberate_differences() -> None:
    """Covers CRP-12, CRP-26, CRP-29 (each way pgworker's parser differs from Node's)."""
    assert {difference for difference, _, _ in DIFFERENCES} == set(ALL_DIFFERENCES)
    answers = run_node([{"line": text, "walk": False} for _, text, _ in DIFFERENCES])
    for (difference, text, node_accepts), node in zip(DIFFERENCES, answers, strict=True):
        ours = pgworker_parse(text)
        assert node["ok"] is node_accepts, (difference, text, node)
        assert isinstance(ours, CronItem) is not node_accepts, (difference, text, ours)
    # Node's refusal of dots is its command pattern's, not a rule about identifiers.
    (dotted,) = parse_crontab("0 4 * * * a.b/c ?id=daily {to: 'me'}")
    assert (dotted.task, dotted.identifier, dotted.payload) == ("a.b/c", "daily", {"to": "me"})
