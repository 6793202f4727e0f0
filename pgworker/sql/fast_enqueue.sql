-- pgworker's set-based enqueue of a batch without job keys: the same rows, defaults and
-- notification as graphile-worker's add_jobs, sent as two plain statements (one round
-- trip, pipelined) instead of a call that builds a job_spec record per job. Nothing is
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

-- name: fast_add_jobs
-- Insert the jobs of %(specs)s (a JSON array of objects with job_spec's fields but
-- job_key) with add_jobs' defaults; rows come back in the order of the array (inserted
-- in that order, ids ascending).
insert into :SCHEMA._private_jobs as jobs (
  job_queue_id, task_id, payload, run_at, max_attempts, priority, flags
)
select
  job_queues.id,
  tasks.id,
  coalesce(spec.payload, '{}'::json),
  coalesce(spec.run_at, now()),
  coalesce(spec.max_attempts, 25),
  coalesce(spec.priority, 0),
  (select jsonb_object_agg(flag, true) from unnest(spec.flags) as flag)
from rows from (
  json_to_recordset(%(specs)s::json) as (
    identifier text, payload json, queue_name text, run_at timestamptz,
    max_attempts smallint, priority smallint, flags text[]
  )
) with ordinality as spec (
  identifier, payload, queue_name, run_at, max_attempts, priority, flags, n
)
inner join :SCHEMA._private_tasks as tasks on tasks.identifier = spec.identifier
left join :SCHEMA._private_job_queues as job_queues on job_queues.queue_name = spec.queue_name
order by spec.n
returning :JOB_COLUMNS
