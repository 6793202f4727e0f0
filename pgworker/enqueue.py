"""Enqueueing by task identifier: the App's defer, adefer, add_job and defer_raw."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import ConfigurationError, PayloadError
from .hooks import DeferSkipped, Hooks
from .job import Job
from .payload import PayloadCodec
from .spec import JobKeyMode, JobSpec, RawJob, check_identifier
from .store import Connection, NewJob, Store
from .store_enqueue import DefinerStatements, default_enqueue_schema
from .task import Task

if TYPE_CHECKING:
    from .testing.eager import EagerMode

_RAW_CODEC: PayloadCodec[Any] = PayloadCodec(Any)


class Enqueueing:
    """The App's ways to add jobs by task identifier, without importing the task: a
    registered task's payload type and defaults apply; any other identifier takes any
    JSON payload (None means ``{}``).

    With ``enqueue_schema`` set, jobs go through the SECURITY DEFINER functions of that
    schema instead of graphile-worker's ``add_job``/``add_jobs`` (docs/permissions.md).
    """

    tasks: dict[str, Task[Any, Any, Any]]
    hooks: Hooks
    store: Store
    use_local_time: bool
    schema: str
    enqueue_schema: str | None
    _definer: DefinerStatements | None = None
    #: The largest payload ``defer`` sends, in bytes of JSON (None: no limit).
    max_payload_bytes: int | None
    #: Set by ``App.eager()`` (pgworker.testing): jobs then run inline, not stored.
    _eager_mode: EagerMode | None = None

    def defer(
        self,
        identifier: str,
        payload: Any = None,
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        job_key_mode: JobKeyMode | None = None,
        flags: Sequence[str] | None = None,
        conn: Connection | None = None,
    ) -> Job:
        """Enqueue a job by task identifier, without importing the task.

        If the task is registered on this app, its payload type and defaults apply;
        otherwise the payload goes as given (any JSON value; None means ``{}``).
        ``delay`` (seconds or a timedelta from now) may stand in for ``run_at``.
        """
        spec = JobSpec(
            queue=queue,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            flags=flags,
            delay=delay,
        )
        return self.add_job(identifier, payload, spec, conn=conn)

    async def adefer(
        self,
        identifier: str,
        payload: Any = None,
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        job_key_mode: JobKeyMode | None = None,
        flags: Sequence[str] | None = None,
    ) -> Job:
        """``defer`` for async code (an async task, an async web handler): awaitable,
        without blocking the event loop.

        It runs ``defer`` in a thread (``asyncio.to_thread``), which borrows a connection
        from the app's pool for the length of the insert: under heavy use, size the pool
        (``max_pool_size``) for it. It cannot join your transaction: use ``defer`` with
        ``conn=`` for that.
        """
        spec = JobSpec(
            queue=queue,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            job_key=job_key,
            job_key_mode=job_key_mode,
            flags=flags,
            delay=delay,
        )
        return await asyncio.to_thread(self.add_job, identifier, payload, spec)

    def add_job(
        self, identifier: str, payload: Any, spec: JobSpec, *, conn: Connection | None = None
    ) -> Job:
        """Enqueue one job with its options given as a JobSpec (what ``defer`` does).

        A registered task's payload type and default options apply.
        """
        # Not a str: no task has it, and check_identifier says what is wrong with it.
        task = self.tasks.get(identifier) if isinstance(identifier, str) else None
        if task is None:
            check_identifier(identifier)
            codec, defaults = _RAW_CODEC, JobSpec()
            payload = {} if payload is None else payload
        else:
            codec, defaults = task.codec, task.defaults
        spec = self._local_run_at(defaults.merge(spec))
        if self.hooks.intercepts_defer:
            payload = self.hooks.before_defer(identifier, payload, spec)
        encoded = codec.encode(payload, max_bytes=self.max_payload_bytes)
        if self._eager_mode is not None:
            return self._eager_mode.run_deferred(identifier, encoded, spec)
        definer = self._definer_statements()
        target = self.store if definer is None else definer
        return target.add_job(identifier, encoded, spec, conn=conn)

    def defer_raw(self, jobs: Iterable[RawJob], *, conn: Connection | None = None) -> list[Job]:
        """Enqueue a mixed batch (several tasks, each job its own options) in one
        transaction. Payloads of tasks registered on this app are checked first; nothing is
        written unless every job is valid. Returns the jobs in order, less any that a
        plugin's ``before_defer`` skipped."""
        return self.defer_batch(((raw.identifier, raw.payload, raw.spec) for raw in jobs), conn)

    def defer_uniform(
        self,
        identifier: str,
        payloads: Iterable[Any],
        options: JobSpec,
        conn: Connection | None = None,
    ) -> list[Job]:
        """``Task.defer_many``'s batch: jobs of one task with the same options. When
        nothing needs a look at each job (no keys, no plugin's ``before_defer``, no eager
        mode or enqueue functions), the payloads are checked and sent as one JSON array;
        otherwise, and whenever that check fails, ``defer_batch`` takes them one by one
        (and names the faulty payload)."""
        payloads = list(payloads)
        if not payloads:
            return []
        task = self.tasks.get(identifier)
        spec = self._batch_spec(task, options)
        array = None
        if not (
            task is None
            or spec.job_key is not None
            or self.hooks.intercepts_defer
            or self._eager_mode is not None
            or self.enqueue_schema is not None
        ):
            array = task.codec.encode_all(payloads, max_bytes=self.max_payload_bytes)
        if array is None:
            return self.defer_batch(((identifier, p, options) for p in payloads), conn)
        return self.store.insert_uniform(identifier, spec, array, len(payloads), conn=conn)

    def defer_batch(
        self, jobs: Iterable[tuple[str, Any, JobSpec]], conn: Connection | None = None
    ) -> list[Job]:
        """``defer_raw`` for (identifier, payload, options) triples whose identifiers are
        already checked (``RawJob`` checks them; ``Task.defer_many`` passes its own)."""
        batch: list[NewJob] = []
        modes: set[str] = set()
        # A batch from defer_many repeats one task and one set of options: merge once.
        last: tuple[str, JobSpec, JobSpec] | None = None
        intercepts = self.hooks.intercepts_defer
        max_bytes = self.max_payload_bytes
        for identifier, payload, options in jobs:
            task = self.tasks.get(identifier)
            codec = task.codec if task is not None else _RAW_CODEC
            if (
                last is not None
                and last[0] == identifier
                and (last[1] is options or last[1] == options)
            ):
                spec = last[2]
            else:
                spec = self._batch_spec(task, options)
                last = (identifier, options, spec)
            if payload is None and task is None:
                payload = {}
            if intercepts:
                try:
                    payload = self.hooks.before_defer(identifier, payload, spec)
                except DeferSkipped:
                    continue  # a skipped job is left out of the batch
            if spec.job_key is not None:
                modes.add(spec.job_key_mode or "replace")
            encoded = codec.encode(payload, max_bytes=max_bytes)
            if encoded == "null":
                raise PayloadError(
                    f"a batch can't carry a null payload ({identifier!r}): add_jobs would "
                    "store {} in its place; defer that job on its own"
                )
            batch.append(NewJob(identifier, encoded, spec))
        if len(modes) > 1:
            raise ConfigurationError(
                "a batch applies one job_key_mode to all its keyed jobs; split it by mode"
            )
        if self._eager_mode is not None:
            eager = self._eager_mode
            return [eager.run_deferred(new.identifier, new.payload, new.spec) for new in batch]
        definer = self._definer_statements()
        target = self.store if definer is None else definer
        return target.add_jobs(batch, preserve_run_at=modes == {"preserve_run_at"}, conn=conn)

    def _batch_spec(self, task: Task[Any, Any, Any] | None, options: JobSpec) -> JobSpec:
        """The options of a batch's job of ``task`` (None: not registered here): the
        task's defaults under ``options``, with this process's time as run_at if the app
        says so."""
        spec = (task.defaults if task is not None else JobSpec()).merge(options)
        if spec.job_key_mode == "unsafe_dedupe":
            raise ConfigurationError("job_key_mode 'unsafe_dedupe' works only with defer()")
        return self._local_run_at(spec)

    def _local_run_at(self, spec: JobSpec) -> JobSpec:
        """With ``use_local_time``, a job with no run_at runs from this process's now
        (graphile-worker's useNodeTime), not from the database's ``now()``."""
        if not self.use_local_time or spec.run_at is not None:
            return spec
        return msgspec.structs.replace(spec, run_at=datetime.now(UTC))

    def grant_enqueue(
        self, role: str, *, enqueue_schema: str | None = None, revoke: bool = False
    ) -> str:
        """Let ``role`` add jobs, and only that: install (or update) pgworker's SECURITY
        DEFINER enqueue functions and grant ``role`` EXECUTE on them (``revoke``: take
        that back). Run it as the role that owns the worker schema, after ``migrate``.

        The functions live in ``enqueue_schema`` (default: the app's ``enqueue_schema``,
        else the worker schema's name + ``_enqueue``), never in the worker schema.
        Returns that schema's name. See docs/permissions.md.
        """
        name = enqueue_schema or self.enqueue_schema or default_enqueue_schema(self.schema)
        DefinerStatements(self.store, name).grant(role, revoke=revoke)
        return name

    def _definer_statements(self) -> DefinerStatements | None:
        """The enqueue functions' statements, when jobs go through them."""
        if self.enqueue_schema is None:
            return None
        definer = self._definer
        if (
            definer is None
            or definer.store is not self.store
            or definer.enqueue_schema != self.enqueue_schema
        ):
            # Built once per store and name (configure(schema=...) makes a new store).
            definer = self._definer = DefinerStatements(self.store, self.enqueue_schema)
        return definer
