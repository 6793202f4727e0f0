-- pgworker's enqueue of a batch without job keys: the same rows, defaults and
-- notification as graphile-worker's add_jobs, written in one transaction by two pipelined
-- statements (names and notification; now() and the ids) and a COPY of the rows, instead
-- of a call that builds a job_spec record and runs an INSERT per job. Nothing is
-- installed: the worker schema stays as graphile-worker made it. Batches with a key go
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

-- name: fast_add_ids
-- After fast_add_names (pipelined behind it, so that it sees the names that statement
-- made sure of): the transaction's now(), the ids of the task identifiers and queue names
-- as JSON objects, and %(count)s ids drawn from the jobs' identity sequence, ascending,
-- for the rows that fast_copy_jobs writes.
with sequence as materialized (
  -- Looked up once: a regclass cast per row would cost more than the nextval itself.
  select pg_get_serial_sequence(%(jobs_table)s, 'id')::regclass as id
)
select
  now(),
  (
    select coalesce(json_object_agg(tasks.identifier, tasks.id), '{}')
    from :SCHEMA._private_tasks as tasks
    where tasks.identifier = any(%(identifiers)s::text[])
  ),
  (
    select coalesce(json_object_agg(job_queues.queue_name, job_queues.id), '{}')
    from :SCHEMA._private_job_queues as job_queues
    where job_queues.queue_name = any(%(queue_names)s::text[])
  ),
  array(select nextval(sequence.id) from sequence cross join generate_series(1, %(count)s))

-- name: fast_copy_jobs
-- The start of a COPY of the rows (store_fast.py names the columns a batch sets; the rest
-- take their defaults, as in add_jobs). COPY writes the identity column's given values.
copy :SCHEMA._private_jobs
