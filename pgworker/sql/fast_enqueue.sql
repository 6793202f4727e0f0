-- pgworker's enqueue of a batch without job keys: the same rows, defaults and
-- notification as graphile-worker's add_jobs, written in one transaction and one round
-- trip by two pipelined statements (names and notification; the rows, from the payloads'
-- JSON array and, per column, one value or one array), instead of a call that builds a
-- job_spec record and runs an INSERT per job. (A COPY of the rows cost the server about
-- as much, but two round trips more, and PostgreSQL refuses it in pipeline mode.) Nothing
-- is installed: the worker schema stays as graphile-worker made it. Batches with a key go
-- through add_jobs, whose key semantics (locks, replace, array merge) this does not copy.
-- Same conventions as queries.sql.

-- name: fast_add_names
-- Make sure each task identifier and queue name has a row, and send add_jobs' jobs:insert
-- notification (its own statement, as in add_jobs: the insert of the jobs below must see
-- rows that a concurrent transaction committed while this one waited on their conflict).
with tasks as (
  insert into :SCHEMA._private_tasks (identifier)
  select identifier from unnest(%(identifiers)s::text[]) as identifier
  on conflict do nothing
), queues as (
  insert into :SCHEMA._private_job_queues (queue_name)
  select queue_name from unnest(%(queue_names)s::text[]) as queue_name
  where queue_name is not null
  on conflict do nothing
)
select pg_notify(
  'jobs:insert', '{"r":' || random()::text || ',"count":' || %(count)s::int::text || '}'
)

-- name: fast_insert_jobs
-- After fast_add_names, in the same transaction and pipeline (so that it sees the names
-- that statement made sure of): insert one row per element of the payloads' JSON array,
-- in batch order. Each other column comes from an array with one element per job, or,
-- when every job of the batch has the same value, from one value for all (its array
-- null); add_jobs' defaults where a job leaves an option unset. The rows go in in batch
-- order, so the identity column numbers them in that order: their ids, ascending, are
-- the batch's. Returns the transaction's now() and those ids (fewer than the batch: a
-- name had no row).
with inserted as (
  insert into :SCHEMA._private_jobs
    (task_id, payload, job_queue_id, priority, run_at, max_attempts, flags)
  select
    tasks.id,
    batch.payload,
    job_queues.id,
    coalesce(batch.priority, %(priority)s::smallint, 0),
    coalesce(batch.run_at, %(run_at)s::timestamptz, now()),
    coalesce(batch.max_attempts, %(max_attempts)s::smallint, 25),
    coalesce(batch.flags, %(flags)s::jsonb)
  from rows from (
    -- One JSON array: its elements keep their text, and it costs one value to send.
    json_array_elements(%(payloads)s::json),
    unnest(%(identifier_each)s::text[]),
    unnest(%(queue_name_each)s::text[]),
    unnest(%(priority_each)s::smallint[]),
    unnest(%(run_at_each)s::timestamptz[]),
    unnest(%(max_attempts_each)s::smallint[]),
    unnest(%(flags_each)s::jsonb[])
  ) with ordinality as batch(
    payload, identifier, queue_name, priority, run_at, max_attempts, flags, position
  )
  join :SCHEMA._private_tasks as tasks
    on tasks.identifier = coalesce(batch.identifier, %(identifier)s::text)
  left join :SCHEMA._private_job_queues as job_queues
    on job_queues.queue_name = coalesce(batch.queue_name, %(queue_name)s::text)
  order by batch.position
  returning _private_jobs.id
)
select now(), array(select inserted.id from inserted order by inserted.id)

-- name: fast_insert_uniform
-- fast_insert_jobs for a batch whose jobs share a task and options (defer_many's): the
-- same rows, the task and queue looked up once rather than joined per job (~10% of the
-- statement's time for 1,000 jobs). Returns what fast_insert_jobs returns.
with inserted as (
  insert into :SCHEMA._private_jobs
    (task_id, payload, job_queue_id, priority, run_at, max_attempts, flags)
  select
    task.id,
    batch.payload,
    job_queue.id,
    coalesce(%(priority)s::smallint, 0),
    coalesce(%(run_at)s::timestamptz, now()),
    coalesce(%(max_attempts)s::smallint, 25),
    %(flags)s::jsonb
  from json_array_elements(%(payloads)s::json) with ordinality as batch(payload, position)
  cross join (
    select id from :SCHEMA._private_tasks where identifier = %(identifier)s::text
  ) as task
  left join (
    select id from :SCHEMA._private_job_queues where queue_name = %(queue_name)s::text
  ) as job_queue on true
  order by batch.position
  returning _private_jobs.id
)
select now(), array(select inserted.id from inserted order by inserted.id)
