-- Statements of pgworker.contrib.django's results store (:SCHEMA is the results schema,
-- pgworker's own, never graphile-worker's).

-- name: results_lock
-- Serialise the creation of the results table between workers starting at once.
select pg_advisory_xact_lock(hashtext('pgworker.contrib.django:' || %(schema)s))

-- name: results_create_schema
-- The results schema, when enabled (created by the worker, never by a web request).
create schema if not exists :SCHEMA

-- name: results_create_table
-- One row per Django task result, kept until expires_at (refreshed by every write).
create table if not exists :SCHEMA.django_task_results (
  id text primary key,
  job_id bigint,
  task_path text not null,
  backend text not null,
  queue_name text not null,
  priority integer not null,
  run_after timestamptz,
  args jsonb not null,
  kwargs jsonb not null,
  status text not null,
  enqueued_at timestamptz,
  started_at timestamptz,
  last_attempted_at timestamptz,
  finished_at timestamptz,
  return_value jsonb,
  errors jsonb not null default '[]'::jsonb,
  worker_ids text[] not null default '{}',
  expires_at timestamptz not null
)

-- name: results_create_index
-- Expiry deletes by expires_at.
create index if not exists django_task_results_expires_at
  on :SCHEMA.django_task_results (expires_at)

-- name: results_started
-- A job started an attempt: the result is RUNNING, this worker appended to worker_ids.
insert into :SCHEMA.django_task_results as results (
  id, job_id, task_path, backend, queue_name, priority, run_after, args, kwargs, status,
  enqueued_at, started_at, last_attempted_at, worker_ids, expires_at
) values (
  %(id)s, %(job_id)s, %(task_path)s, %(backend)s, %(queue_name)s, %(priority)s,
  %(run_after)s, %(args)s::jsonb, %(kwargs)s::jsonb, 'RUNNING', %(enqueued_at)s, now(),
  now(), array[%(worker_id)s], now() + make_interval(secs => %(ttl)s)
)
on conflict (id) do update set
  job_id = excluded.job_id,
  status = 'RUNNING',
  finished_at = null,
  return_value = null,
  last_attempted_at = now(),
  worker_ids = results.worker_ids || excluded.worker_ids,
  expires_at = excluded.expires_at
returning started_at, last_attempted_at, worker_ids, errors::text

-- name: results_succeeded
-- The attempt returned: SUCCESSFUL with the return value (JSON text).
update :SCHEMA.django_task_results set
  status = 'SUCCESSFUL',
  return_value = %(return_value)s::jsonb,
  finished_at = now(),
  expires_at = now() + make_interval(secs => %(ttl)s)
where id = %(id)s

-- name: results_failed
-- The attempt raised: the error appended; READY while attempts remain, else FAILED.
update :SCHEMA.django_task_results set
  status = %(status)s,
  errors = errors || jsonb_build_array(%(error)s::jsonb),
  finished_at = case when %(status)s = 'FAILED' then now() end,
  expires_at = now() + make_interval(secs => %(ttl)s)
where id = %(id)s

-- name: results_get
-- One result, unless it has expired.
select id, job_id, task_path, backend, queue_name, priority, run_after, args::text,
  kwargs::text, status, enqueued_at, started_at, last_attempted_at, finished_at,
  return_value::text, errors::text, worker_ids
from :SCHEMA.django_task_results
where id = %(id)s and expires_at > now()

-- name: results_expire
-- Delete the results whose time is up.
delete from :SCHEMA.django_task_results where expires_at <= now()
