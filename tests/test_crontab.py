"""The crontab text format: what parses into which cron item, and which lines fail how.

No database: pure parsing. Cases follow graphile-worker's crontab tests (CRP-01..CRP-32 in
the test catalogue), with pgworker's own wording for the errors.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from pgworker import App, ConfigurationError
from pgworker.crontab import CronItem, CrontabError, parse_crontab

EVERY_MINUTE = "* * * * *"


def one(line: str) -> CronItem:
    items = parse_crontab(line)
    assert len(items) == 1
    return items[0]


def test_simple_line_uses_the_task_as_identifier_and_every_value() -> None:
    """Covers CRP-01."""
    item = one("* * * * * simple")
    assert (item.task, item.identifier) == ("simple", "simple")
    expression = item.expression
    assert expression.minutes == frozenset(range(60))
    assert expression.hours == frozenset(range(24))
    assert expression.days == frozenset(range(1, 32))
    assert expression.months == frozenset(range(1, 13))
    assert expression.weekdays == frozenset(range(7))
    assert item.backfill_period == timedelta(0)
    assert item.payload is None
    assert (item.queue, item.priority, item.max_attempts, item.job_key) == (None,) * 4


def test_fixed_times_and_sunday_as_0_or_7() -> None:
    """Covers CRP-02, CRP-03, CRP-04."""
    item = one("0 4 * * * every_day_at_4_am")
    assert (item.expression.minutes, item.expression.hours) == (frozenset({0}), frozenset({4}))
    assert one("0 4 * * 0 sunday_0").expression.weekdays == {0}
    sunday = one("0 4 * * 7 every_sunday_at_4_am ?id=sunday_7")
    assert sunday.expression.weekdays == {0}
    assert (sunday.identifier, sunday.task) == ("sunday_7", "every_sunday_at_4_am")


def test_lists_are_sorted_and_deduplicated() -> None:
    """Covers CRP-06."""
    item = one("*/10,7,56-59 1 1 1 1 lists")
    assert sorted(item.expression.minutes) == [0, 7, 10, 20, 30, 40, 50, 56, 57, 58, 59]
    assert item.expression.hours == item.expression.days == item.expression.months == {1}


def test_every_option() -> None:
    """Covers CRP-07, CRP-11, CRP-27."""
    item = one(
        "0 */4 * * * do_it ?id=stuff&fill=4w3d2h1m&max=3&queue=my_queue&priority=3"
        "&jobKey=my_key&jobKeyMode=preserve_run_at"
    )
    assert item.identifier == "stuff"
    assert item.backfill_period == timedelta(weeks=4, days=3, hours=2, minutes=1)
    assert (item.max_attempts, item.queue, item.priority) == (3, "my_queue", 3)
    assert (item.job_key, item.job_key_mode) == ("my_key", "preserve_run_at")
    assert item.expression.hours == {0, 4, 8, 12, 16, 20}


def test_job_key_mode_defaults_to_replace_and_rust_spellings_are_accepted() -> None:
    """Covers CRP-10, CRP-25, CRP-26."""
    assert one("* * * * * t ?jobKey=my_key").job_key_mode == "replace"
    rust = one("* * * * * t ?job_key=k&job_key_mode=preserve_run_at&priority=-4")
    assert (rust.job_key, rust.job_key_mode, rust.priority) == ("k", "preserve_run_at", -4)


def test_option_values_are_url_decoded() -> None:
    assert one("* * * * * t ?jobKey=a%20key+too").job_key == "a key too"


def test_fill_units_add_up() -> None:
    """Covers CRP-32."""
    # 1w 30d 28h 350m 2s, the Rust port's example: 3,318,602 seconds.
    assert one("* * * * * t ?fill=1w30d28h350m2s").backfill_period == timedelta(seconds=3_318_602)


def test_payload_is_a_json_object_and_may_hold_a_hash() -> None:
    """Covers CRP-08, CRP-27."""
    item = one('30 4,10-15 * * 1 send ?fill=2d&max=10 {"onboarding": false, "tag": "#1 # x"}')
    assert item.payload == {"onboarding": False, "tag": "#1 # x"}
    assert item.expression.hours == {4, 10, 11, 12, 13, 14, 15}
    assert item.backfill_period == timedelta(days=2)


def test_comments_blank_lines_and_odd_spacing_are_ignored() -> None:
    """Covers CRP-09."""
    text = (
        "# a comment\n"
        "\n"
        "   \t\n"
        "  # an indented comment\n"
        '   1    2  *  *   *    spaced   ?id=spaced   {"a": 1}   \r\n'
        "\n"
        "0 0 * * * second\n"
    )
    first, second = parse_crontab(text)
    assert (first.identifier, first.expression.minutes, first.payload) == (
        "spaced",
        frozenset({1}),
        {"a": 1},
    )
    assert second.identifier == "second"


def test_json5_payloads_as_graphile_worker_reads_them() -> None:
    """Covers CRP-05, CRP-28."""
    assert one("0 4 * * 2 t {isTuesday: true}").payload == {"isTuesday": True}
    assert one('* * * * * t {onboarding:false,name:"Jean"}').payload == {
        "onboarding": False,
        "name": "Jean",
    }
    assert one("* * * * * t {toggle:    4 ,name: 'Jean Pierre'}").payload == {
        "toggle": 4,
        "name": "Jean Pierre",
    }
    json5 = one("* * * * * t {a: 0x1F, b: +1, c: .5, 'd': [1, 2,], /* note */ e: {f: null,},}")
    assert json5.payload == {"a": 31, "b": 1, "c": 0.5, "d": [1, 2], "e": {"f": None}}
    # A # inside a string is text, and JSON written as JSON still reads the same.
    assert one('* * * * * t {"tag": "#1", "n": [1.5, true]}').payload == {
        "tag": "#1",
        "n": [1.5, True],
    }


def test_the_crontab_accepts_every_task_identifier_the_app_accepts() -> None:
    """Covers CRP-12, CRP-29 (pgworker's one rule: dots too, which Node refuses)."""
    app = App(database_url="postgresql://unused")
    for identifier in ["emails.send", "a.b/c:d-e_f", "_x.y", "t" * 128]:
        app.task(identifier)(lambda payload: None)
        assert one(f"{EVERY_MINUTE} {identifier}").task == identifier
    for identifier in ["0task", ".hidden", "with space", "ta%sk", "t" * 129]:
        with pytest.raises(ConfigurationError, match="task identifier"):
            app.task(identifier)(lambda payload: None)
        with pytest.raises(CrontabError):
            parse_crontab(f"{EVERY_MINUTE} {identifier}")


def test_task_identifiers_with_slashes_colons_and_dashes() -> None:
    """Covers CRP-12, CRP-29."""
    for task in ["nested/task", "nested/folder/task", "mail:send_one", "sendMail", "_private-x"]:
        assert one(f"{EVERY_MINUTE} {task}").task == task


def test_mixed_lists_steps_and_ranges_in_every_field() -> None:
    """Covers CRP-30, CRP-31."""
    item = one("*/7,8,30-35 * 3,*/4 * *,4 t")
    assert sorted(item.expression.minutes) == [
        0,
        7,
        8,
        14,
        21,
        28,
        30,
        31,
        32,
        33,
        34,
        35,
        42,
        49,
        56,
    ]
    assert sorted(item.expression.days) == [1, 3, 5, 9, 13, 17, 21, 25, 29]
    assert item.expression.weekdays == frozenset(range(7))


def test_range_steps_and_start_steps_beyond_graphile_worker() -> None:
    item = one("10-30/10 5/6 1-31/15 * 1-7/3 t")
    assert item.expression.minutes == {10, 20, 30}
    assert item.expression.hours == {5, 11, 17, 23}
    assert item.expression.days == {1, 16, 31}
    assert item.expression.weekdays == {1, 4, 0}  # 7 is Sunday


def test_items_come_in_file_order() -> None:
    """Covers CRP-13."""
    text = "\n".join(f"{EVERY_MINUTE} task_{i}" for i in range(5))
    assert [item.task for item in parse_crontab(text)] == [f"task_{i}" for i in range(5)]


# Each bad line sits at a known line number, after comments and a good line, so that
# the error has to name the right line. (line, what the message must say)
MALFORMED = [
    ("* * * * too_few_parameters", "expected five time fields and a task identifier"),
    ("@daily task", "expected five time fields"),
    ("* * * * * two tasks", "unexpected 'tasks' after the task identifier"),
    (
        "1,60 * * * * task",
        "too large value '60' in the minute field: expected values in the range 0-59",
    ),
    ("*/0 * * * * task", "invalid step '*/0' in the minute field"),
    ("* 24 * * * task", "too large value '24' in the hour field"),
    ("* * 0 * * task", "too small value '0' in the day-of-month field"),
    ("* * * 13 * task", "too large value '13' in the month field"),
    ("* * * * 8 task", "too large value '8' in the day-of-week field"),
    ("5-3 * * * * task", "invalid range '5-3' in the minute field"),
    ("* * * JAN * task", "unsupported syntax 'JAN' in the month field"),
    ("* * 1,,2 * * task", "unsupported syntax '' in the day-of-month field"),
    ("* * * * * 0task", "task identifier '0task' must start with a letter or _"),
    ("* * * * * ta%sk", "task identifier 'ta%sk' must start with a letter or _"),
    ("* * * * * task ?unknown=3", "unsupported option 'unknown'; supported options are 'id'"),
    ("* * * * * task ?fill=1h&fill=2h", "option 'fill' is given more than once"),
    ("* * * * * task ?jobKey=a&job_key=b", "option 'job_key' is given more than once"),
    ("* * * * * task ?fill=4w_3d", "invalid value '4w_3d' for option 'fill'"),
    ("* * * * * task ?fill=", "invalid value '' for option 'fill'"),
    ("* * * * * task ?max=three", "invalid value 'three' for option 'max'"),
    ("* * * * * task ?max=0", "max_attempts must be an int from 1 to 32767, got 0"),
    ("* * * * * task ?priority=99999", "priority must be an int from -32768 to 32767"),
    ("* * * * * task ?priority=high", "invalid value 'high' for option 'priority'"),
    ("* * * * * task ?id=1abc", "invalid value '1abc' for option 'id'"),
    ("* * * * * task ?queue=a%20b", "invalid value 'a b' for option 'queue'"),
    ("* * * * * task ?jobKey=k&jobKeyMode=unsafe_dedupe", "for option 'jobKeyMode'"),
    ("* * * * * task ?jobKeyMode=preserve_run_at", "option 'jobKeyMode' needs a 'jobKey'"),
    # A value with a trailing newline (%0A), which `$` alone would let through:
    ("* * * * * task ?jobKey=k&jobKeyMode=replace%0A", "for option 'jobKeyMode'"),
    ("* * * * * task ?id=abc%0A", "invalid value 'abc\n' for option 'id'"),
    ("* * * * * task ?max=3%0A", "invalid value '3\n' for option 'max'"),
    ("* * * * * task ? {}", "empty options after '?'"),
    ("* * * * * task {invalidJson=true}", "invalid JSON5 payload"),
    ('* * * * * task {"a": 1} trailing', "the payload must end the line with its closing }"),
    ("* * * * * task {a: 1} // note", "the payload must end the line with its closing }"),
    ("* * * * * task {a: 1} {b: 2}", "invalid JSON5 payload"),
    ("* * * * * task {a: 1, b}", "invalid JSON5 payload"),
    ('* * * * * task {"a": NaN}', "NaN cannot be stored in a JSON payload"),
    ("* * * * * task {a: -Infinity}", "-Infinity cannot be stored in a JSON payload"),
    ("* * * * * task {a: 1e999}", "1e999 is too large to store in a JSON payload"),
    ("* * * * * task ?fill=200000000w", "invalid value '200000000w' for option 'fill'"),
    ("* * * * * task [1, 2]", "unexpected '[1,' after the task identifier"),
    ("* * * * * task # not a comment", "comments go on lines of their own"),
]


@pytest.mark.parametrize(("bad", "problem"), MALFORMED, ids=[bad for bad, _ in MALFORMED])
@pytest.mark.gw("E-03", "E-04", "E-05", "E-06", "E-07", "E-08")
def test_malformed_line_names_its_line_and_problem(bad: str, problem: str) -> None:
    """Covers CRP-14 to CRP-19, CRP-25, CRP-29, CRP-32."""
    text = (
        f"# header\n\n{EVERY_MINUTE} fine_task\n# another comment\n  {bad}  \n{EVERY_MINUTE} after"
    )
    with pytest.raises(CrontabError) as caught:
        parse_crontab(text)
    error = caught.value
    assert (error.line_number, error.line) == (5, bad)
    message = str(error)
    assert message.startswith("line 5 of crontab: "), message
    assert f"'{bad}'" in message
    assert problem in message


def test_enough_malformed_cases() -> None:
    assert len(MALFORMED) >= 15


def test_duplicate_identifiers_name_both_lines() -> None:
    """Covers CRP-13 (unique identifiers)."""
    text = f"{EVERY_MINUTE} send ?id=mail\n# between\n0 4 * * * other ?id=mail"
    with pytest.raises(
        CrontabError, match=r"^line 3 of crontab: identifier 'mail' is already used on line 1"
    ):
        parse_crontab(text)
    with pytest.raises(CrontabError, match="line 2 of crontab: identifier 'task'"):
        parse_crontab(f"{EVERY_MINUTE} task\n0 0 * * * task")


def test_source_names_the_file_in_errors() -> None:
    with pytest.raises(CrontabError, match=r"^line 1 of /etc/app/crontab: "):
        parse_crontab("bad", source="/etc/app/crontab")


def test_empty_crontab_has_no_items() -> None:
    assert parse_crontab("") == []
    assert parse_crontab("# only a comment\n\n") == []
