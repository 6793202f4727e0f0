"""The dashboard's actions on jobs and workers: POST only, each confirmed in the page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
from flask import Flask, Response, render_template, request

from ..cli_common import parse_run_at
from ..errors import PgWorkerError

if TYPE_CHECKING:
    from .web import Dashboard

#: The event the pages' fragments refresh on after an action (htmx's HX-Trigger).
REFRESH_EVENT = "refresh"
DEFAULT_FAIL_REASON = "permanently failed by an operator (dashboard)"
DEFAULT_CANCEL_REASON = "cancelled by an operator (dashboard)"


def register_actions(flask_app: Flask, dashboard: Dashboard) -> None:
    """Add the action routes; each answers with one sentence saying what happened."""
    admin = dashboard.admin

    def action(rule: str) -> Callable[[Callable[..., str]], Callable[..., Response]]:
        def decorate(fn: Callable[..., str]) -> Callable[..., Response]:
            def view(**kwargs: int) -> Response:
                try:
                    return _answer(fn(**kwargs), ok=True)
                except ActionRefused as exc:
                    return _answer(str(exc), ok=False)
                except PgWorkerError as exc:
                    return _answer(f"The database refused: {exc}", ok=False)

            view.__name__ = fn.__name__
            flask_app.add_url_rule(rule, view_func=view, methods=["POST"])
            return view

        return decorate

    @action("/jobs/<int:job_id>/run-now")
    def run_now(job_id: int) -> str:
        listed = admin.job(job_id)
        if listed is None:
            raise ActionRefused(f"No job {job_id}: it finished or was removed.")
        # A permanently failed job gets its attempts back, or it would never be fetched.
        attempts = 0 if listed.job.is_permanently_failed else None
        changed = admin.reschedule_jobs([job_id], run_at=datetime.now(UTC), attempts=attempts)
        _require_changed(changed, job_id)
        return f"Job {job_id} will run now."

    @action("/jobs/<int:job_id>/reschedule")
    def reschedule(job_id: int) -> str:
        text = request.form.get("run_at", "").strip()
        if not text:
            raise ActionRefused("Give a time (ISO 8601) or a delay like +10m.")
        try:
            run_at = parse_run_at(text)
        except click.BadParameter as exc:
            raise ActionRefused(exc.format_message()) from exc
        assert run_at is not None
        _require_changed(admin.reschedule_jobs([job_id], run_at=run_at), job_id)
        return f"Job {job_id} rescheduled to {run_at.isoformat(timespec='seconds')}."

    @action("/jobs/<int:job_id>/fail")
    def fail(job_id: int) -> str:
        reason = request.form.get("reason", "").strip() or DEFAULT_FAIL_REASON
        _require_changed(admin.permanently_fail_jobs([job_id], reason), job_id)
        return f"Job {job_id} permanently failed: {reason}"

    @action("/jobs/<int:job_id>/cancel")
    def cancel(job_id: int) -> str:
        outcome = admin.cancel(job_id, DEFAULT_CANCEL_REASON)
        if outcome == "not_found":
            raise ActionRefused(f"No job {job_id}: it finished or was removed.")
        if outcome == "removed":
            return f"Job {job_id} cancelled and removed (it wasn't running)."
        return f"Job {job_id} is running: its worker was asked to stop it."

    @action("/actions/remove-by-key")
    def remove_by_key() -> str:
        key = request.form.get("job_key", "").strip()
        if not key:
            raise ActionRefused("Give the key of the job to remove.")
        job = admin.remove_job(key)
        if job is None:
            raise ActionRefused(f"No job has the key {key!r}.")
        return f"Removed job {job.id} (key {key!r})."

    @action("/actions/unlock-worker")
    def unlock_worker() -> str:
        worker_id = request.form.get("worker_id", "").strip()
        if not worker_id:
            raise ActionRefused("Give the id of the dead worker.")
        registered = next((w for w in admin.workers() if w.worker_id == worker_id), None)
        if registered is not None and registered.state(dashboard.stale_after) == "live":
            # Its jobs are running: unlocked, other workers would run them a second time.
            raise ActionRefused(
                f"Worker {worker_id} is alive (it heartbeat {registered.heartbeat_age:.0f} s "
                "ago): stop it, or cancel its jobs, instead."
            )
        count = admin.force_unlock_workers([worker_id])
        return f"Unlocked {count} job(s) of worker {worker_id}."


class ActionRefused(Exception):
    """An action that could not be done, with the sentence that says why."""


def _require_changed(changed: Sequence[object], job_id: int) -> None:
    if not changed:
        raise ActionRefused(
            f"Job {job_id} was not changed: it is running (locked), or no longer exists."
        )


def _answer(message: str, *, ok: bool) -> Response:
    """The sentence as a fragment for htmx (which then refreshes the page's parts), or as
    a small page for a form posted without JavaScript."""
    if request.headers.get("HX-Request"):
        body = render_template("flash.html", message=message, ok=ok)
        return Response(body, 200, {"HX-Trigger": REFRESH_EVENT})
    body = render_template("action_page.html", message=message, ok=ok)
    return Response(body, 200 if ok else 409)
