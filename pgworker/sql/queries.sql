-- Every statement pgworker runs, by name. Each block starts with "-- name: NAME" and a
-- line saying what it does. :SCHEMA stands for the quoted schema name; :JOB_COLUMNS for
-- the columns a Job is read from (jobs.id, jobs.priority, ... jobs.flags: JOB_COLUMNS in
-- job.py), which the store reads by name. Values are always passed as %(named)s parameters.

-- name: server_version
-- The server's version as an integer (150004 for 15.4).
select current_setting('server_version_num')::int

-- name: ledger_exists
-- Whether the schema has a migrations table, and whether that has the breaking column.
select
  exists (
    select 1 from pg_catalog.pg_tables
    where schemaname = %(schema)s and tablename = 'migrations'
  ),
  exists (
    -- The catalog, not information_schema: that hides the columns of a table the role
    -- may not read, and a permission problem would pass for a pre-0.11 ledger.
    select 1 from pg_catalog.pg_attribute as columns
    join pg_catalog.pg_class as tables on tables.oid = columns.attrelid
    join pg_catalog.pg_namespace as schemas on schemas.oid = tables.relnamespace
    where schemas.nspname = %(schema)s and tables.relname = 'migrations'
    and columns.attname = 'breaking' and not columns.attisdropped
  )

-- name: take_migration_lock
-- Serialise pgworker processes migrating the same schema until the transaction ends.
select pg_advisory_xact_lock(hashtext('pgworker migrate ' || %(schema)s))

-- name: ledger_state
-- The latest applied migration, and the latest breaking one.
select
  coalesce(max(id), 0),
  coalesce(max(id) filter (where breaking), 0)
from :SCHEMA.migrations

-- name: record_migrations
-- Write rows into the migrations ledger.
insert into :SCHEMA.migrations (id, breaking)
select * from unnest(%(ids)s::int[], %(breaking)s::boolean[])

-- name: add_jobs_definition
-- The source of the installed add_jobs function, to see whether it has the #580 fix.
select pg_catalog.pg_get_functiondef(p.oid)
from pg_catalog.pg_proc as p
join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
where n.nspname = %(schema)s and p.proname = 'add_jobs'

-- name: notify_migration
-- Tell Node workers listening on worker:migrate that a migration was applied.
select pg_notify('worker:migrate', %(payload)s)

-- name: listen
-- Subscribe to graphile-worker's channels (database-wide, not per schema).
LISTEN "jobs:insert";
LISTEN "worker:migrate";
LISTEN "pgworker:cancel"

-- name: ping
-- A round trip on the LISTEN connection, to notice a dead or silent one (named, so that
-- pg_stat_activity shows whose it is).
select 1 as listener_ping

-- name: register_tasks
-- Make sure each task identifier has a row. (Its own statement: a read in the same
-- statement would not see a row another transaction committed meanwhile.)
insert into :SCHEMA._private_tasks (identifier)
select unnest(%(identifiers)s::text[])
on conflict do nothing

-- name: task_ids
-- The ids of these task identifiers.
select id, identifier from :SCHEMA._private_tasks
where identifier = any(%(identifiers)s::text[])

-- name: add_job
-- Add one job through the add_job function, which also sends the jobs:insert notification.
-- (Task and queue names are not read back here: rows that add_job inserts are invisible
-- to the rest of this statement.)
select :JOB_COLUMNS, jobs.task_id, jobs.job_queue_id
from :SCHEMA.add_job(
  identifier => %(identifier)s,
  payload => %(payload)s::json,
  queue_name => %(queue_name)s,
  run_at => %(run_at)s,
  max_attempts => %(max_attempts)s,
  job_key => %(job_key)s,
  priority => %(priority)s,
  flags => %(flags)s::text[],
  job_key_mode => %(job_key_mode)s
) as jobs

-- name: add_jobs
-- Add a batch of jobs in one statement through the add_jobs function. Rows do not
-- necessarily come back in the order of the specs (older add_jobs versions join first).
select :JOB_COLUMNS, jobs.task_id, jobs.job_queue_id
from :SCHEMA.add_jobs(
  array(select json_populate_recordset(null:::SCHEMA.job_spec, %(specs)s::json)),
  %(preserve_run_at)s
) as jobs

-- name: names_by_id
-- Task identifiers and queue names for the given ids.
select 'task', id, identifier from :SCHEMA._private_tasks
where id = any(%(task_ids)s::int[])
union all
select 'queue', id, queue_name from :SCHEMA._private_job_queues
where id = any(%(queue_ids)s::int[])

-- name: claim_jobs
-- Lock up to %(limit)s runnable jobs of the given tasks for this worker, oldest first
-- within each priority, taking at most one job per named queue (graphile/worker#621)
-- and locking that queue, so that a named queue runs one job at a time.
-- The order is graphile-worker's and jobs_main_index's: (priority, run_at). Jobs with
-- equal keys (one add_jobs batch, or one transaction, shares now()) come in no promised
-- order. Adding "id" would make each claim sort every job sharing the first run_at:
-- 11 ms a claim behind a 20,000-job batch, 48 ms behind 100,000, against 1 ms without.
-- "Runnable now" is by the database's clock, or by the worker's when it sends %(now)s
-- (App(use_local_time=True), graphile-worker's useNodeTime).
-- The same statement first completes %(done_ids)s, successes of this worker's earlier
-- jobs (complete_jobs, below, with the same effect): one transaction and one commit per
-- claim cycle instead of two. The claim reads the snapshot taken before those deletes,
-- where the completed jobs and their queues are locked still: it takes neither, and a
-- queue unlocked here is seen by the next claim.
with done as (
  delete from :SCHEMA._private_jobs as jobs
  where jobs.id = any(%(done_ids)s::bigint[])
  and jobs.locked_by = %(worker_id)s
  returning jobs.job_queue_id
),
unlocked_queues as (
  update :SCHEMA._private_job_queues as job_queues
  set locked_by = null, locked_at = null
  from done
  where job_queues.id = done.job_queue_id
  and job_queues.locked_by = %(worker_id)s
),
candidates as (
  select jobs.id, jobs.job_queue_id, jobs.priority, jobs.run_at
  from :SCHEMA._private_jobs as jobs
  where jobs.is_available = true
  and jobs.run_at <= coalesce(%(now)s::timestamptz, now())
  and jobs.task_id = any(%(task_ids)s::int[])
  and (
    jobs.job_queue_id is null
    or jobs.job_queue_id in (
      select job_queues.id from :SCHEMA._private_job_queues as job_queues
      where job_queues.is_available = true
      for update skip locked
    )
  )
  and (jobs.flags ?| %(forbidden_flags)s::text[]) is not true
  order by jobs.priority, jobs.run_at
  limit :LIMIT
  for update skip locked
),
chosen as (
  select id, job_queue_id from candidates where job_queue_id is null
  union all
  (
    select distinct on (job_queue_id) id, job_queue_id from candidates
    where job_queue_id is not null
    order by job_queue_id, priority, run_at, id
  )
),
locked_queues as (
  update :SCHEMA._private_job_queues as job_queues
  set locked_by = %(worker_id)s, locked_at = now()
  from chosen
  where job_queues.id = chosen.job_queue_id
  returning job_queues.id, job_queues.queue_name
)
update :SCHEMA._private_jobs as jobs
set attempts = jobs.attempts + 1, locked_by = %(worker_id)s, locked_at = now()
from chosen
left join locked_queues on locked_queues.id = chosen.job_queue_id
where jobs.id = chosen.id
returning
  :JOB_COLUMNS, jobs.task_id, locked_queues.queue_name, jobs.payload::text as payload

-- name: complete_jobs
-- Delete finished jobs still locked by this worker and unlock their queues.
with done as (
  delete from :SCHEMA._private_jobs as jobs
  where jobs.id = any(%(job_ids)s::bigint[])
  and jobs.locked_by = %(worker_id)s
  returning jobs.job_queue_id
)
update :SCHEMA._private_job_queues as job_queues
set locked_by = null, locked_at = null
from done
where job_queues.id = done.job_queue_id
and job_queues.locked_by = %(worker_id)s

-- name: fail_jobs
-- Record failures: store the error, unlock, and push run_at back by the failure's delay
-- or to its run_at, else by graphile-worker's exp(least(attempts, 10)) seconds. A
-- permanent failure uses up every attempt; a snooze (refund) gives its attempt back
-- and keeps last_error (its message is null); a batch job's failed items replace its
-- payload. Null overrides leave graphile-worker's behaviour as it is. A failure that
-- names the lock it was run under (its locked_at) touches only that lock: a retry of a
-- write whose answer was lost must not unlock the job's next attempt, which this same
-- worker may have claimed meanwhile.
with failed as (
  update :SCHEMA._private_jobs as jobs
  set
    last_error = coalesce(failure.message, jobs.last_error),
    run_at = coalesce(
      failure.run_at,
      greatest(now(), jobs.run_at)
        + coalesce(failure.delay, exp(least(jobs.attempts, 10))) * interval '1 second'
    ),
    attempts = case
      when failure.permanent then jobs.max_attempts
      when failure.refund then greatest(0, jobs.attempts - 1)
      else jobs.attempts
    end,
    payload = coalesce(failure.payload, jobs.payload),
    locked_by = null,
    locked_at = null
  from unnest(
    %(job_ids)s::bigint[],
    %(messages)s::text[],
    %(permanent)s::boolean[],
    %(refund)s::boolean[],
    %(delays)s::float8[],
    %(run_ats)s::timestamptz[],
    %(payloads)s::json[],
    %(locked_ats)s::timestamptz[]
  ) as failure(id, message, permanent, refund, delay, run_at, payload, locked_at)
  where jobs.id = failure.id
  and jobs.locked_by = %(worker_id)s
  and (failure.locked_at is null or jobs.locked_at = failure.locked_at)
  returning jobs.job_queue_id
)
update :SCHEMA._private_job_queues as job_queues
set locked_by = null, locked_at = null
from failed
where job_queues.id = failed.job_queue_id
and job_queues.locked_by = %(worker_id)s

-- name: return_jobs
-- Give back jobs this worker will not finish: the attempt is refunded and the queue
-- unlocked. Jobs cut off while running (a forced stop) also wait %(delay)s seconds and
-- say why in last_error; prefetched jobs that never started keep run_at and last_error.
-- A job given with its lock's locked_at is returned only from that lock (as in fail_jobs).
with returned as (
  update :SCHEMA._private_jobs as jobs
  set
    attempts = greatest(0, jobs.attempts - 1),
    locked_by = null,
    locked_at = null,
    run_at = case
      when %(delay)s > 0 then greatest(jobs.run_at, now() + %(delay)s * interval '1 second')
      else jobs.run_at
    end,
    last_error = coalesce(%(message)s, jobs.last_error),
    updated_at = now()
  from unnest(%(job_ids)s::bigint[], %(locked_ats)s::timestamptz[]) as given(id, locked_at)
  where jobs.id = given.id
  and jobs.locked_by = %(worker_id)s
  and (given.locked_at is null or jobs.locked_at = given.locked_at)
  returning jobs.job_queue_id
)
update :SCHEMA._private_job_queues as job_queues
set locked_by = null, locked_at = null
from returned
where job_queues.id = returned.job_queue_id
and job_queues.locked_by = %(worker_id)s

-- name: unlock_worker
-- Release every job and queue still locked by this worker (after a shutdown).
select :SCHEMA.force_unlock_workers(array[%(worker_id)s::text])

-- name: remove_job
-- Admin: delete the pending job with this key, or stop a running one from retrying.
select :JOB_COLUMNS, jobs.task_id, jobs.job_queue_id
from :SCHEMA.remove_job(%(job_key)s) as jobs
where jobs.id is not null

-- name: admin_complete_jobs
-- Admin: delete these jobs, unless locked in the last 4 hours.
select :JOB_COLUMNS, jobs.task_id, jobs.job_queue_id
from :SCHEMA.complete_jobs(%(job_ids)s::bigint[]) as jobs

-- name: permanently_fail_jobs
-- Admin: use up every attempt of these jobs, with a reason, unless locked in the last 4 hours.
select :JOB_COLUMNS, jobs.task_id, jobs.job_queue_id
from :SCHEMA.permanently_fail_jobs(%(job_ids)s::bigint[], %(reason)s) as jobs

-- name: reschedule_jobs
-- Admin: change run_at, priority, attempts or max_attempts (null keeps the value).
select :JOB_COLUMNS, jobs.task_id, jobs.job_queue_id
from :SCHEMA.reschedule_jobs(
  %(job_ids)s::bigint[],
  run_at => %(run_at)s,
  priority => %(priority)s,
  attempts => %(attempts)s,
  max_attempts => %(max_attempts)s
) as jobs

-- name: existing_job_ids
-- Admin: which of these ids name a job (to tell a missing job from one left alone).
select id from :SCHEMA._private_jobs where id = any(%(job_ids)s::bigint[])

-- name: force_unlock_workers
-- Admin: release every job and queue locked by these (dead) workers; returns how many
-- jobs they held (counted in the statement's snapshot, before the function's update).
select
  (select count(*) from :SCHEMA._private_jobs where locked_by = any(%(worker_ids)s::text[])),
  :SCHEMA.force_unlock_workers(%(worker_ids)s::text[])

-- name: delete_permanently_failed_jobs
-- Cleanup: delete jobs that used up their attempts and are not running.
delete from :SCHEMA._private_jobs as jobs
where jobs.attempts >= jobs.max_attempts and jobs.locked_at is null

-- name: gc_job_queues
-- Cleanup: delete queues that hold no job and are not locked.
delete from :SCHEMA._private_job_queues as job_queues
where job_queues.locked_at is null
and not exists (
  select 1 from :SCHEMA._private_jobs as jobs where jobs.job_queue_id = job_queues.id
)

-- name: gc_task_identifiers
-- Cleanup: delete task identifiers no job uses, except those to keep and those a
-- registered pgworker worker runs (its metadata lists them): workers cache task ids, and
-- a re-created identifier gets a new id they would never fetch. Node workers don't
-- register: their identifiers must be in the keep list.
delete from :SCHEMA._private_tasks as tasks
where tasks.identifier <> all(%(keep)s::text[])
and not exists (select 1 from :SCHEMA._private_jobs as jobs where jobs.task_id = tasks.id)
and not exists (
  select 1 from :SCHEMA._private_workers as workers
  where jsonb_typeof(workers.metadata -> 'tasks') = 'array'
  and workers.metadata -> 'tasks' ? tasks.identifier
)

-- name: list_jobs
-- Admin: jobs from the public view, filtered by task, queue, key and state, oldest first
-- (newest first with %(newest_first)s), a page of %(limit)s from %(offset)s on.
-- The state is derived: running (locked), permanently_failed (no attempts left),
-- retrying (failed before), scheduled (run_at ahead) or waiting.
select * from (
  select
    :JOB_COLUMNS, jobs.task_identifier, jobs.queue_name,
    case
      when jobs.locked_at is not null then 'running'
      when jobs.attempts >= jobs.max_attempts then 'permanently_failed'
      when jobs.attempts > 0 then 'retrying'
      when jobs.run_at > now() then 'scheduled'
      else 'waiting'
    end as state
  from :SCHEMA.jobs as jobs
  where (%(task)s::text is null or jobs.task_identifier = %(task)s)
  and (%(queue)s::text is null or jobs.queue_name = %(queue)s)
  and (%(job_key)s::text is null or jobs.key = %(job_key)s)
  and (%(job_id)s::bigint is null or jobs.id = %(job_id)s)
) as listed
where %(state)s::text is null or listed.state = %(state)s
order by case when %(newest_first)s::boolean then -listed.id else listed.id end
limit %(limit)s offset %(offset)s

-- name: job_payload
-- Admin: the payload of one job.
select payload::text from :SCHEMA._private_jobs where id = %(job_id)s

-- name: job_payloads
-- Testing helpers: the payloads of several jobs.
select id, payload::text from :SCHEMA._private_jobs where id = any(%(job_ids)s::bigint[])

-- name: drop_schema
-- Testing helpers: drop a throwaway worker schema and everything in it.
drop schema if exists :SCHEMA cascade

-- name: job_stats
-- Admin: how many jobs each task has in each queue and state (states as in list_jobs).
select
  jobs.task_identifier,
  jobs.queue_name,
  case
    when jobs.locked_at is not null then 'running'
    when jobs.attempts >= jobs.max_attempts then 'permanently_failed'
    when jobs.attempts > 0 then 'retrying'
    when jobs.run_at > now() then 'scheduled'
    else 'waiting'
  end as state,
  count(*)
from :SCHEMA.jobs as jobs
group by 1, 2, 3
order by 1, 2 nulls first, 3

-- name: known_crontabs
-- Cron: what _private_known_crontabs holds for these item identifiers.
select identifier, known_since, last_execution
from :SCHEMA._private_known_crontabs
where identifier = any(%(identifiers)s::text[])

-- name: register_crontabs
-- Cron: record items seen for the first time as known since now, with no last execution
-- (so they are never backfilled).
insert into :SCHEMA._private_known_crontabs (identifier, known_since)
select unnest(%(identifiers)s::text[]), %(known_since)s::timestamptz
on conflict do nothing

-- name: schedule_cron_jobs
-- Cron: graphile-worker's scheduling statement for one minute. "locks" moves each due
-- item's last_execution up to this minute (or records the item) and returns only the
-- items it moved, whose row it then holds locked: a worker that comes second for an
-- item and minute gets no row back and adds no job. add_job runs only for those rows
-- (in the select list, evaluated after the join; "offset 0" keeps it there).
with specs as (
  select
    entries.index,
    entries.spec->>'identifier' as identifier,
    entries.spec->>'task' as task,
    entries.spec->'payload' as payload,
    entries.spec->>'queue_name' as queue_name,
    (entries.spec->>'max_attempts')::smallint as max_attempts,
    (entries.spec->>'priority')::smallint as priority,
    entries.spec->>'job_key' as job_key,
    entries.spec->>'job_key_mode' as job_key_mode
  from json_array_elements(%(specs)s::json) with ordinality as entries (spec, index)
),
locks as (
  insert into :SCHEMA._private_known_crontabs as known_crontabs
    (identifier, known_since, last_execution)
  select specs.identifier, %(ts)s::timestamptz, %(ts)s::timestamptz
  from specs
  on conflict (identifier) do update
  set last_execution = excluded.last_execution
  where known_crontabs.last_execution is null
  or known_crontabs.last_execution < excluded.last_execution
  returning known_crontabs.identifier
)
select scheduled.identifier, (scheduled.job).id
from (
  select
    specs.index,
    specs.identifier,
    :SCHEMA.add_job(
      identifier => specs.task,
      payload => specs.payload,
      queue_name => specs.queue_name,
      run_at => %(ts)s::timestamptz,
      max_attempts => specs.max_attempts,
      job_key => specs.job_key,
      priority => specs.priority,
      flags => null,
      job_key_mode => specs.job_key_mode
    ) as job
  from specs
  join locks on locks.identifier = specs.identifier
  offset 0
) as scheduled
order by scheduled.index
