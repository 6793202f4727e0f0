"""Cron: the expression matcher, the Cron builder, and the scheduler's protocol on a real
database (registration, backfill, de-duplication between workers, job keys, timer drift).

Time is injected: schedulers get a fake clock and a fake sleep, so simulated hours take
milliseconds.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
import psycopg
import pytest

from pgworker import App, ConfigurationError, PayloadError
from pgworker.cron import (
    Cron,
    CronExpression,
    CronExpressionError,
    CronItem,
    CronScheduler,
    Weekday,
    parse_crontab,
)
from pgworker.crontab import format_cron_ts

Conn = psycopg.Connection[tuple[Any, ...]]
T0 = datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)


def at(hour: int, minute: int, second: int = 0, *, day: int = 1) -> datetime:
    return datetime(2024, 1, day, hour, minute, second, tzinfo=UTC)


# -- the matcher against a brute-force reference --------------------------------------

FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


def reference_term(term: str, value: int, low: int, high: int) -> bool:
    """Whether one term selects ``value``, straight from the definition of each form."""
    base, _, step_text = term.partition("/")
    step = int(step_text) if step_text else 1
    if base == "*":
        first, last = low, high
    elif "-" in base:
        first, last = (int(x) for x in base.split("-"))
    else:
        first = int(base)
        last = max(first, high) if step_text else first
    return first <= value <= last and (value - first) % step == 0


def reference_field(text: str, value: int, index: int) -> bool:
    low, high = FIELDS[index]
    terms = text.split(",")
    hit = any(reference_term(term, value, low, high) for term in terms)
    if index == 4 and value == 0:  # Sunday is 0 and 7
        hit = hit or any(reference_term(term, 7, low, high) for term in terms)
    return hit


def reference_tables(expression: str) -> list[list[bool]]:
    """For each field, whether each value (indexed by value) is selected."""
    fields = expression.split()
    return [
        [reference_field(fields[i], v, i) if low <= v <= high else False for v in range(high + 1)]
        for i, (low, high) in enumerate(FIELDS)
    ]


def random_field(rng: random.Random, index: int, *, restricted: bool) -> str:
    low, high = FIELDS[index]
    top = 7 if index == 4 else high
    if not restricted:
        return rng.choice(["*", "*", f"{low}-{top}", "*/1"])
    terms = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        a, b = sorted(rng.sample(range(low, top + 1), 2))
        step = rng.randint(1, max(2, (high - low) // 2))
        terms.append(
            rng.choice([str(a), f"{a}-{b}", f"*/{step}", f"{a}-{b}/{step}", f"{a}/{step}", f"{b}"])
        )
    return ",".join(terms)


def random_expression(rng: random.Random, shape: int) -> str:
    """``shape`` picks which day fields are restricted: both, day of month, day of week,
    neither. Months are restricted one time in three; minutes and hours always vary."""
    days, weekdays = [(True, True), (True, False), (False, True), (False, False)][shape % 4]
    return " ".join(
        [
            random_field(rng, 0, restricted=rng.random() < 0.8),
            random_field(rng, 1, restricted=rng.random() < 0.7),
            random_field(rng, 2, restricted=days),
            random_field(rng, 3, restricted=rng.random() < 0.33),
            random_field(rng, 4, restricted=weekdays),
        ]
    )


class Minute(NamedTuple):
    ts: datetime
    minute: int
    hour: int
    day: int
    month: int
    weekday: int


@pytest.fixture(scope="module")
def year_of_minutes() -> list[Minute]:
    """Every minute of 2024 (a leap year), with its fields."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    minutes = []
    for i in range(366 * 24 * 60):
        ts = start + timedelta(minutes=i)
        minutes.append(Minute(ts, ts.minute, ts.hour, ts.day, ts.month, ts.isoweekday() % 7))
    return minutes


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.gw("CRP-24")
def test_matcher_agrees_with_brute_force_over_a_year(
    seed: int, year_of_minutes: list[Minute]
) -> None:
    rng = random.Random(seed)
    text = random_expression(rng, seed)
    expression = CronExpression.parse(text)
    minute_ok, hour_ok, day_ok, month_ok, weekday_ok = reference_tables(text)
    # "Restricted" is decided by brute force too: does the field leave out any value?
    days_restricted = not all(day_ok[1:32])
    weekdays_restricted = not all(weekday_ok[0:7])

    expected = []
    for m in year_of_minutes:
        if not (minute_ok[m.minute] and hour_ok[m.hour] and month_ok[m.month]):
            continue
        day_hit, weekday_hit = day_ok[m.day], weekday_ok[m.weekday]
        if days_restricted and weekdays_restricted:
            hit = day_hit or weekday_hit
        else:
            hit = (day_hit or not days_restricted) and (weekday_hit or not weekdays_restricted)
        if hit:
            expected.append(m.ts)
    actual = [m.ts for m in year_of_minutes if expression.matches(m.ts)]
    assert actual == expected, text

    # next_after walks the same minutes.
    walked: list[datetime] = []
    cursor: datetime | None = year_of_minutes[0].ts - timedelta(minutes=1)
    end = year_of_minutes[-1].ts
    while cursor is not None:
        cursor = expression.next_after(cursor)
        if cursor is None or cursor > end:
            break
        walked.append(cursor)
    assert walked == expected, text


def test_random_expressions_parse_to_the_reference_sets() -> None:
    rng = random.Random(2024)
    for i in range(2000):
        text = random_expression(rng, i)
        expression = CronExpression.parse(text)
        tables = reference_tables(text)
        parsed = [
            expression.minutes,
            expression.hours,
            expression.days,
            expression.months,
            expression.weekdays,
        ]
        for values, table in zip(parsed, tables, strict=True):
            assert values == {v for v, hit in enumerate(table) if hit}, text


@pytest.mark.gw("CRP-22", "CRP-23", "CRP-24", "CRP-31")
def test_graphile_worker_matcher_cases() -> None:
    every = CronExpression.parse("* * * * *")
    for ts in [at(0, 0), at(23, 59, day=31), datetime(2021, 2, 28, 13, 7, tzinfo=UTC)]:
        assert every.matches(ts)
    weekend = CronExpression.parse("* * * * 5-6")  # 2024-01-05 is a Friday
    assert [d for d in range(1, 15) if weekend.matches(at(8, 0, day=d))] == [5, 6, 12, 13]
    both = CronExpression.parse("0-5 15 3-4 7 0-2")
    assert both.matches(datetime(2018, 7, 1, 15, 0, tzinfo=UTC))  # a Sunday, not 3-4
    assert both.matches(datetime(2022, 7, 4, 15, 5, tzinfo=UTC))  # the 4th, a Monday
    assert both.matches(datetime(2025, 7, 4, 15, 0, tzinfo=UTC))  # the 4th, a Friday
    assert not both.matches(datetime(2025, 7, 4, 15, 6, tzinfo=UTC))  # minute 6
    assert not both.matches(datetime(2025, 7, 5, 15, 0, tzinfo=UTC))  # a Saturday, the 5th
    assert not both.matches(datetime(2018, 1, 1, 15, 0, tzinfo=UTC))  # January
    step_days = CronExpression.parse("30 8-10 */4 * *")  # counts from the 1st
    assert step_days.matches(datetime(2012, 12, 17, 8, 30, tzinfo=UTC))
    assert step_days.matches(datetime(1998, 10, 13, 10, 30, tzinfo=UTC))
    assert not step_days.matches(datetime(1998, 10, 4, 10, 30, tzinfo=UTC))
    assert not step_days.matches(datetime(2012, 12, 17, 11, 30, tzinfo=UTC))


@pytest.mark.gw("CRS-11")
def test_matching_is_in_utc() -> None:
    four = CronExpression.parse("0 4 * * *")
    paris = datetime(2024, 1, 1, 5, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    assert paris.hour == 6
    assert not four.matches(paris)
    assert four.matches(paris - timedelta(hours=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        four.matches(datetime(2024, 1, 1, 4, 0))


def test_next_after() -> None:
    leap = CronExpression.parse("0 0 29 2 *")
    assert leap.next_after(datetime(2096, 3, 1, tzinfo=UTC)) == datetime(2104, 2, 29, tzinfo=UTC)
    assert CronExpression.parse("0 0 30 2 *").next_after(at(0, 0)) is None
    hourly = CronExpression.parse("15 * * * *")
    assert hourly.next_after(at(4, 15)) == at(5, 15)
    assert hourly.next_after(at(4, 14, 59)) == at(4, 15)


@pytest.mark.gw("CRP-21", "CRP-32", "E-09")
def test_expression_errors_name_the_field() -> None:
    cases = {
        "* * *": "expected 5 fields (minute hour day-of-month month day-of-week), got 3",
        "foo": "expected 5 fields",
        "60 * * * *": "too large value '60' in the minute field",
        "* * * * MON": "unsupported syntax 'MON' in the day-of-week field",
        "* */0 * * *": "invalid step '*/0' in the hour field",
        "* * 31-1 * *": "invalid range '31-1' in the day-of-month field",
    }
    for text, problem in cases.items():
        with pytest.raises(CronExpressionError, match=re.escape(problem)):
            CronExpression.parse(text)


@pytest.mark.gw("CRS-09")
def test_cron_ts_format() -> None:
    assert format_cron_ts(at(4, 30)) == "2024-01-01T04:30:00.000Z"
    new_york = at(4, 30).astimezone(ZoneInfo("America/New_York"))
    assert format_cron_ts(new_york) == "2024-01-01T04:30:00.000Z"


# -- the builder ----------------------------------------------------------------------


class SayHello(msgspec.Struct):
    message: str


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    message: str


@pytest.fixture
def tasks() -> App:
    app = App()

    @app.task("say_hello")
    def say_hello(payload: SayHello) -> None:
        pass

    @app.task("strict")
    def strict(payload: Strict) -> None:
        pass

    @app.task("anything")
    def anything(payload: dict[str, Any]) -> None:
        pass

    return app


def test_each_constructor_builds_its_expression(tasks: App) -> None:
    task = tasks.tasks["anything"]
    cases = [
        (Cron.every_minute(task), "* * * * *"),
        (Cron.every_n_minutes(task, 2), "*/2 * * * *"),
        (Cron.hourly_at(task, 15), "15 * * * *"),
        (Cron.daily_at(task, 4, 30), "30 4 * * *"),
        (Cron.weekly_on(task, Weekday.MONDAY, 4, 30), "30 4 * * 1"),
        (Cron.weekly_on(task, 7, 0, 0), "0 0 * * 0"),
        (Cron.monthly_on(task, 15, 23, 59), "59 23 15 * *"),
        (Cron.yearly_on(task, 12, 25, 6, 0), "0 6 25 12 *"),
        (Cron("0 4 * * 1-5", task), "0 4 * * 1-5"),
    ]
    for builder, expression in cases:
        item = builder.build()
        assert item.expression.text == expression
        assert (item.task, item.identifier) == ("anything", "anything")
    assert Cron.weekly_on(task, Weekday.SUNDAY, 4, 0).build().matches(at(4, 0, day=7))


def test_constructor_arguments_are_checked() -> None:
    bad: list[Callable[[], Cron]] = [
        lambda: Cron.every_n_minutes("t", 0),
        lambda: Cron.every_n_minutes("t", 60),
        lambda: Cron.hourly_at("t", 60),
        lambda: Cron.daily_at("t", 24, 0),
        lambda: Cron.daily_at("t", 1, True),
        lambda: Cron.weekly_on("t", 8, 0, 0),
        lambda: Cron.monthly_on("t", 0, 0, 0),
        lambda: Cron.yearly_on("t", 13, 1, 0, 0),
    ]
    for make in bad:
        with pytest.raises(ConfigurationError, match="must be a whole number from"):
            make()
    with pytest.raises(CronExpressionError, match="too large value '32' in the day-of-month"):
        Cron("0 0 32 * *", "t")


@pytest.mark.gw("WU-19")
def test_options_by_keyword_and_by_chaining(tasks: App) -> None:
    by_keyword = Cron(
        "0 4 * * 1-5",
        "nightly_report",
        id="weekday-report",
        queue="reports",
        priority=5,
        max_attempts=3,
        fill=timedelta(hours=1),
    ).build()
    by_chain = (
        Cron("0 4 * * 1-5", "nightly_report")
        .id("weekday-report")
        .queue("reports")
        .priority(5)
        .max_attempts(3)
        .fill(timedelta(hours=1))
        .build()
    )
    assert by_keyword == by_chain
    assert (by_chain.identifier, by_chain.task, by_chain.queue) == (
        "weekday-report",
        "nightly_report",
        "reports",
    )
    assert (by_chain.priority, by_chain.max_attempts) == (5, 3)
    assert by_chain.backfill_period == timedelta(hours=1)

    keyed = (
        Cron.every_n_minutes(tasks.tasks["say_hello"], 2)
        .fill(timedelta(minutes=10))
        .job_key("say_hello_dedupe")
        .job_key_mode("preserve_run_at")
        .payload(SayHello(message="Crontab"))
        .build()
    )
    assert (keyed.job_key, keyed.job_key_mode) == ("say_hello_dedupe", "preserve_run_at")
    assert keyed.payload == {"message": "Crontab"}
    assert Cron.every_minute("t").job_key("k").build().job_key_mode == "replace"


def test_builders_are_immutable() -> None:
    base = Cron.daily_at("report", 4, 0)
    first, second = base.id("first"), base.id("second").queue("q")
    assert base.build().identifier == "report"
    assert (first.build().identifier, first.build().queue) == ("first", None)
    assert (second.build().identifier, second.build().queue) == ("second", "q")


def test_bad_options_are_refused_where_given() -> None:
    builder = Cron.every_minute("t")
    with pytest.raises(ConfigurationError, match="cron id '1x'"):
        builder.id("1x")
    with pytest.raises(ConfigurationError, match="fill takes a timedelta"):
        builder.fill(timedelta(minutes=-1))
    with pytest.raises(ConfigurationError, match="priority must be an int from"):
        builder.priority(40000)
    with pytest.raises(ConfigurationError, match="max_attempts must be an int from"):
        builder.max_attempts(0)
    with pytest.raises(ConfigurationError, match="queue must be a str of 1 to 128"):
        builder.queue("")
    with pytest.raises(ConfigurationError, match="'replace' or 'preserve_run_at'"):
        builder.job_key_mode("unsafe_dedupe")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="job_key_mode needs a job_key"):
        builder.job_key_mode("preserve_run_at").build()


def test_payload_is_checked_against_the_tasks_type(tasks: App) -> None:
    say_hello = tasks.tasks["say_hello"]
    item = Cron.every_minute(say_hello).payload(SayHello(message="hi")).build()
    assert item.payload == {"message": "hi"}
    assert Cron.every_minute(say_hello).payload({"message": "hi"}).build() == item
    with pytest.raises(PayloadError) as caught:
        Cron.every_minute(say_hello).payload({"message": 5})
    assert caught.value.path == "$.message"
    # Every job carries _cron, so a payload-less item of a type with required fields fails.
    with pytest.raises(PayloadError, match="the item has no payload"):
        Cron.every_minute(say_hello).build()
    # ... and so does a type that forbids fields it does not know.
    with pytest.raises(PayloadError, match="_cron"):
        Cron.every_minute(tasks.tasks["strict"]).payload(Strict(message="x")).build()
    with pytest.raises(ConfigurationError, match="must be a JSON object"):
        Cron.every_minute("untyped").payload([1, 2])
    assert Cron.every_minute("untyped").payload({"n": 1}).build().payload == {"n": 1}


def test_crontab_items_can_be_checked_against_a_task(tasks: App) -> None:
    good, bad = parse_crontab(
        '* * * * * say_hello {"message": "hi"}\n* * * * * say_hello ?id=bad {"message": 1}'
    )
    codec = tasks.tasks["say_hello"].codec
    good.check_payload(codec)
    with pytest.raises(PayloadError, match="cron item 'bad'"):
        bad.check_payload(codec)


def test_scheduler_refuses_duplicate_identifiers(opened: App) -> None:
    with pytest.raises(ConfigurationError, match="two cron items have the identifier 'a'"):
        CronScheduler(opened.store, [Cron.every_minute("a").build()] * 2)


# -- the scheduler on a database ------------------------------------------------------


class FakeTime:
    """A clock that only moves when slept on; stops the scheduler at ``until``."""

    def __init__(self, now: datetime, until: datetime, stop: threading.Event) -> None:
        self.now = now
        self.until = until
        self.stop = stop
        self.sleeps: list[float] = []

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.now >= self.until:
            self.stop.set()


def run_until(store: Any, items: list[CronItem], start: datetime, until: datetime) -> FakeTime:
    stop = threading.Event()
    fake = FakeTime(start, until, stop)
    CronScheduler(store, items, clock=fake.clock, sleep=fake.sleep).run(stop)
    return fake


class CronJob(NamedTuple):
    id: int
    task: str
    run_at: datetime
    payload: dict[str, Any]
    key: str | None
    queue: str | None
    priority: int
    max_attempts: int
    revision: int

    @property
    def ts(self) -> str:
        return str(self.payload["_cron"]["ts"])

    @property
    def backfilled(self) -> bool:
        return bool(self.payload["_cron"]["backfilled"])


def jobs(db: Conn, schema: str) -> list[CronJob]:
    rows = db.execute(
        f"""select jobs.id, tasks.identifier, jobs.run_at, jobs.payload::text, jobs.key,
                   queues.queue_name, jobs.priority, jobs.max_attempts, jobs.revision
            from "{schema}"._private_jobs as jobs
            join "{schema}"._private_tasks as tasks on tasks.id = jobs.task_id
            left join "{schema}"._private_job_queues as queues on queues.id = jobs.job_queue_id
            order by jobs.id"""
    ).fetchall()
    return [CronJob(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]


def known(db: Conn, schema: str) -> dict[str, tuple[datetime, datetime | None]]:
    rows = db.execute(
        f'select identifier, known_since, last_execution from "{schema}"._private_known_crontabs'
    ).fetchall()
    return {identifier: (since, last) for identifier, since, last in rows}


def cron_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """Messages the scheduler logged at ``level`` or above."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pgworker.cron" and record.levelno >= level
    ]


def minutes(first: datetime, count: int) -> list[str]:
    return [format_cron_ts(first + timedelta(minutes=i)) for i in range(count)]


@pytest.mark.gw("CRS-01", "CRS-02", "CRS-09")
def test_backfill_after_an_outage(opened: App, db: Conn, schema: str) -> None:
    filled = Cron.every_minute("a").fill(timedelta(minutes=10)).build()
    unfilled = Cron.every_minute("b").build()
    newcomer = Cron.every_minute("c").fill(timedelta(hours=1)).build()

    # Up from 12:00:30 to 12:03:30: the minutes 12:01-12:03 are scheduled live.
    run_until(opened.store, [filled, unfilled], T0, at(12, 3, 30))
    assert Counter((j.task, j.backfilled) for j in jobs(db, schema)) == {
        ("a", False): 3,
        ("b", False): 3,
    }
    assert known(db, schema)["a"] == (T0, at(12, 3))

    # Down for 30 minutes (12:04-12:33 missed), up again at 12:33:30 until 12:35:30.
    run_until(opened.store, [filled, unfilled, newcomer], at(12, 33, 30), at(12, 35, 30))
    made = jobs(db, schema)
    backfilled = [j for j in made if j.backfilled]
    # Exactly the 10 minutes within the fill period, oldest first, each due at its minute.
    assert [j.ts for j in backfilled] == minutes(at(12, 24), 10)
    assert {j.task for j in backfilled} == {"a"}
    assert all(j.run_at == datetime.fromisoformat(j.ts) for j in made)
    # Then live scheduling goes on for everyone, the newcomer included (never backfilled).
    for task in "abc":
        live = [j.ts for j in made if j.task == task and not j.backfilled]
        assert live[-2:] == minutes(at(12, 34), 2)
    assert Counter(j.task for j in made) == {"a": 3 + 10 + 2, "b": 3 + 2, "c": 2}
    assert known(db, schema)["c"] == (at(12, 33, 30), at(12, 35))


@pytest.mark.gw("CRS-01", "CRS-03")
def test_first_sight_registers_without_backfilling(opened: App, db: Conn, schema: str) -> None:
    item = Cron("0 */4 * * *", "do_it").fill(timedelta(days=1)).build()
    scheduler = CronScheduler(opened.store, [item])
    scheduler.register_and_backfill(at(12, 0, 30))
    assert known(db, schema) == {"do_it": (at(12, 0, 30), None)}
    assert jobs(db, schema) == []
    # Known for days, last run 25 hours ago: backfill reaches back one day only.
    db.execute(
        f'update "{schema}"._private_known_crontabs set known_since = %s, last_execution = %s',
        (at(0, 0) - timedelta(days=14), at(11, 0) - timedelta(days=1)),
    )
    scheduler.register_and_backfill(at(12, 0, 30))
    assert [j.ts for j in jobs(db, schema)] == [
        "2023-12-31T16:00:00.000Z",
        "2023-12-31T20:00:00.000Z",
        "2024-01-01T00:00:00.000Z",
        "2024-01-01T04:00:00.000Z",
        "2024-01-01T08:00:00.000Z",
        "2024-01-01T12:00:00.000Z",
    ]
    assert known(db, schema)["do_it"][1] == at(12, 0)


def test_three_schedulers_make_each_minute_once(
    make_app: Callable[..., App], db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    items = [
        Cron.every_minute("a").build(),
        Cron.every_minute("b").payload({"n": 1}).build(),
        Cron.every_minute("c").job_key("c-key").build(),
        Cron.every_minute("d").fill(timedelta(minutes=5)).build(),
    ]
    apps = [make_app(max_pool_size=2).open() for _ in range(3)]
    apps[0].migrate()
    # "d" was last run 8 minutes before the start: all three backfill its last 5 minutes.
    db.execute(
        f'insert into "{schema}"._private_known_crontabs values (%s, %s, %s)',
        ("d", T0 - timedelta(hours=1), T0 - timedelta(minutes=8)),
    )
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def worker(app: App) -> None:
        stop = threading.Event()
        fake = FakeTime(T0, T0 + timedelta(minutes=5), stop)

        def lockstep_sleep(seconds: float) -> None:
            barrier.wait(timeout=30)  # all three then race for the same minute
            fake.sleep(seconds)

        try:
            CronScheduler(app.store, items, clock=fake.clock, sleep=lockstep_sleep).run(stop)
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.ERROR, logger="pgworker.cron"):
        threads = [threading.Thread(target=worker, args=(app,)) for app in apps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors
    assert not cron_logs(caplog, logging.ERROR)
    made = jobs(db, schema)
    live = minutes(at(12, 1), 5)
    for task in "abd":
        assert [j.ts for j in made if j.task == task and not j.backfilled] == live
    assert [j.ts for j in made if j.task == "d" and j.backfilled] == minutes(at(11, 56), 5)
    # The keyed item replaced its pending job each minute: one row, the last minute's.
    keyed = [j for j in made if j.task == "c"]
    assert [(j.ts, j.key, j.revision) for j in keyed] == [(live[-1], "c-key", 4)]


@pytest.mark.gw("CRS-08")
def test_job_key_replace_and_preserve_run_at(opened: App, db: Conn, schema: str) -> None:
    replace = Cron("0 */4 * * *", "my_task").job_key("foo").build()
    preserve = (
        Cron("0 */4 * * *", "my_task")
        .id("preserving")
        .job_key("bar")
        .job_key_mode("preserve_run_at")
        .build()
    )
    scheduler = CronScheduler(opened.store, [replace, preserve])
    first = datetime(2021, 1, 1, 4, 0, tzinfo=UTC)
    second = datetime(2021, 1, 1, 8, 0, tzinfo=UTC)
    assert scheduler.schedule_minute(first) == ["my_task", "preserving"]
    before = {j.key: j for j in jobs(db, schema)}
    assert scheduler.schedule_minute(second) == ["my_task", "preserving"]
    after = {j.key: j for j in jobs(db, schema)}
    assert len(after) == 2
    # replace: the same row, moved to the new minute with the new payload.
    assert after["foo"].id == before["foo"].id
    assert (before["foo"].ts, after["foo"].ts) == (
        "2021-01-01T04:00:00.000Z",
        "2021-01-01T08:00:00.000Z",
    )
    assert (before["foo"].run_at, after["foo"].run_at) == (first, second)
    # preserve_run_at: the same row with the new payload, but still due at the first time.
    assert after["bar"].id == before["bar"].id
    assert after["bar"].ts == "2021-01-01T08:00:00.000Z"
    assert after["bar"].run_at == first
    assert after["bar"].revision == 1

    # A running job keeps running, loses its key, and a new job takes the key (both modes).
    db.execute(
        f"update \"{schema}\"._private_jobs set locked_at = now(), locked_by = 'w', attempts = 1"
    )
    third = datetime(2021, 1, 1, 12, 0, tzinfo=UTC)
    scheduler.schedule_minute(third)
    made = jobs(db, schema)
    assert len(made) == 4
    for key, old in after.items():
        renewed = [j for j in made if j.key == key]
        assert len(renewed) == 1
        assert renewed[0].id != old.id
        assert renewed[0].run_at == third


@pytest.mark.gw("CRS-09", "EDGE-04")
def test_cron_payload_shape_and_job_options(opened: App, db: Conn, schema: str) -> None:
    full = (
        Cron("30 4 * * *", "report", queue="reports", priority=-3, max_attempts=2)
        .payload({"a": 1, "nested": {"b": [1, "two"]}, "_cron": "replaced"})
        .build()
    )
    bare = Cron("30 4 * * *", "bare").build()
    scheduler = CronScheduler(opened.store, [full, bare])
    assert scheduler.schedule_minute(at(4, 30)) == ["report", "bare"]
    assert scheduler.schedule_minute(at(4, 31)) == []  # nothing due
    assert scheduler.schedule_minute(at(4, 30, day=2), backfilled=True) == ["report", "bare"]
    made = jobs(db, schema)
    assert [j.payload for j in made] == [
        {
            "a": 1,
            "nested": {"b": [1, "two"]},
            "_cron": {"ts": "2024-01-01T04:30:00.000Z", "backfilled": False},
        },
        {"_cron": {"ts": "2024-01-01T04:30:00.000Z", "backfilled": False}},
        {
            "a": 1,
            "nested": {"b": [1, "two"]},
            "_cron": {"ts": "2024-01-02T04:30:00.000Z", "backfilled": True},
        },
        {"_cron": {"ts": "2024-01-02T04:30:00.000Z", "backfilled": True}},
    ]
    report = made[0]
    assert (report.task, report.queue, report.priority, report.max_attempts) == (
        "report",
        "reports",
        -3,
        2,
    )
    assert report.run_at == at(4, 30)
    assert (made[1].queue, made[1].priority, made[1].max_attempts) == (None, 0, 25)


@pytest.mark.gw("CRS-06")
def test_a_minute_is_scheduled_once_and_never_backwards(opened: App, db: Conn, schema: str) -> None:
    scheduler = CronScheduler(opened.store, [Cron.every_minute("t").build()])
    assert scheduler.schedule_minute(at(4, 0)) == ["t"]
    assert scheduler.schedule_minute(at(4, 0)) == []
    assert scheduler.schedule_minute(at(3, 59)) == []
    assert len(jobs(db, schema)) == 1
    with pytest.raises(ValueError, match="whole minutes"):
        scheduler.schedule_minute(at(4, 1, 30))


@pytest.mark.gw("CRS-06", "CRS-07", "CRS-12", "CRS-14")
def test_timer_drift_early_wakes_sleep_again_and_late_ones_catch_up(
    opened: App, db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Scripted wake-up times: early, on time, very late, back in time, on time again."""
    item = Cron("* * * * *", "tick").build()
    stop = threading.Event()
    wakes: Iterator[datetime] = iter(
        [
            at(3, 59, 40),  # early: no job yet
            at(4, 0) + timedelta(milliseconds=1),  # 04:00
            at(4, 3, 5),  # late: 04:01, 04:02, 04:03 in order
            at(3, 0, 1),  # the clock jumps back: nothing, then sleeps until 04:04
            at(4, 4, 1),  # 04:04 (04:00 not again)
        ]
    )
    now = [at(3, 59, 10)]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        try:
            now[0] = next(wakes)
        except StopIteration:
            stop.set()

    with caplog.at_level(logging.WARNING, logger="pgworker.cron"):
        CronScheduler(opened.store, [item], clock=lambda: now[0], sleep=sleep).run(stop)
    # One warning for the late wake-up, not one per minute caught up.
    assert [m[:22] for m in cron_logs(caplog, logging.WARNING)] == ["cron is 0:02:05 behind"]
    made = jobs(db, schema)
    assert [j.ts for j in made] == minutes(at(4, 0), 5)
    assert not any(j.backfilled for j in made)
    assert [j.id for j in made] == sorted(j.id for j in made)
    # Each sleep aims just past the next minute boundary.
    assert sleeps[0] == pytest.approx(50.001)
    assert sleeps[1] == pytest.approx(20.001)


def test_an_error_restarts_the_loop_which_backfills_the_lost_minute(
    opened: App, db: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    item = Cron.every_minute("t").fill(timedelta(minutes=5)).build()
    stop = threading.Event()
    fake = FakeTime(T0, at(12, 2, 30), stop)
    scheduler = CronScheduler(opened.store, [item], clock=fake.clock, sleep=fake.sleep)
    real_schedule = scheduler.schedule_minute
    failures: list[datetime] = []

    def flaky(ts: datetime, *, backfilled: bool = False) -> list[str]:
        if not failures:
            failures.append(ts)
            raise psycopg.OperationalError("connection lost")
        return real_schedule(ts, backfilled=backfilled)

    scheduler.schedule_minute = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="pgworker.cron"):
        scheduler.run(stop)
    assert failures == [at(12, 1)]
    messages = cron_logs(caplog, logging.ERROR)
    assert len(messages) == 1
    assert messages[0].startswith("cron scheduler failed; restarting in")
    assert 0 < fake.sleeps[1] <= 0.2  # the backoff
    # The restart re-ran the backfill, which made the failed minute's job.
    assert [(j.ts, j.backfilled) for j in jobs(db, schema)] == [
        ("2024-01-01T12:01:00.000Z", True),
        ("2024-01-01T12:02:00.000Z", False),
    ]


def test_run_returns_at_once_without_items(opened: App) -> None:
    stop = threading.Event()
    started = time.monotonic()
    CronScheduler(opened.store, []).run(stop)  # no thread left waiting on anything
    assert time.monotonic() - started < 2  # it did not wait for a minute or for stop


@pytest.mark.gw("CRS-13")
def test_run_stops_promptly_on_the_real_clock(opened: App, db: Conn, schema: str) -> None:
    scheduler = CronScheduler(opened.store, [Cron.every_minute("t").build()])
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while "t" not in known(db, schema) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "t" in known(db, schema)  # registered, now sleeping until the next minute
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
