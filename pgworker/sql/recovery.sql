-- Statements of the worker registry: heartbeats, the dead-worker sweep, the 4-hour
-- stale-lock reset and the registry listing. Same conventions as queries.sql.

-- name: worker_heartbeat
-- Register this worker or refresh its heartbeat; says whether the row had to be created
-- (true after the first beat means a sweeper took this worker for dead meanwhile).
insert into :SCHEMA._private_workers as workers (id, last_heartbeat_at, metadata)
values (%(worker_id)s, now(), %(metadata)s::jsonb)
on conflict (id) do update
set last_heartbeat_at = now(), metadata = excluded.metadata
returning (xmax = 0) as created

-- name: register_worker
-- Register this worker as it starts, unless a worker of the same id heartbeat in the last
-- %(stale_after)s seconds (then no row comes back, and this one must not start). The
-- row of a dead worker of the same id (a crashed predecessor) is taken over.
insert into :SCHEMA._private_workers as workers (id, last_heartbeat_at, metadata)
values (%(worker_id)s, now(), %(metadata)s::jsonb)
on conflict (id) do update
set last_heartbeat_at = now(), started_at = now(), metadata = excluded.metadata
where workers.last_heartbeat_at < now() - %(stale_after)s * interval '1 second'
returning workers.id

-- name: worker_deregister
-- Forget this worker (a clean exit).
delete from :SCHEMA._private_workers where id = %(worker_id)s

-- name: try_sweep_lock
-- One sweeper at a time, Rust workers included: the Rust crate's advisory lock key,
-- held until the transaction ends. It also turns JIT off for the rest of the
-- transaction: the planner costs the sweep's statements as scans of the whole jobs
-- table (its Rust rule looks jobs up by locked_by, which has no index), so on a table
-- of some 20,000 jobs PostgreSQL compiled them with LLVM for a handful of rows: 30-160
-- ms on a fresh connection, every run-once worker's start-up. And a sweep whose client
-- goes silent mid-transaction (a dead network: the server would only notice hours
-- later) is ended by the server after %(idle_timeout_ms)s ms idle, which frees the lock
-- for the other sweepers; a sweep takes milliseconds.
select
  pg_try_advisory_xact_lock(%(class_id)s::int, %(object_id)s::int),
  set_config('jit', 'off', true),
  set_config('idle_in_transaction_session_timeout', %(idle_timeout_ms)s::int::text, true)

-- name: lock_dead_workers
-- Registered workers whose heartbeat is too old, locked until the sweep commits (a late
-- heartbeat waits, then finds its row gone). pgworker's rows say so in their metadata
-- and go stale after %(threshold)s seconds; any other row is a Rust worker's and keeps
-- the Rust crate's rule: %(foreign_threshold)s seconds, three times that while it holds
-- a job flagged infrastructure_resilient. The sweeping worker (%(self_id)s) is alive
-- whatever its row says, and is never among them.
select workers.id, extract(epoch from now() - workers.last_heartbeat_at)::float8
from :SCHEMA._private_workers as workers
where workers.id is distinct from %(self_id)s::text
and workers.last_heartbeat_at < now() - case
  when workers.metadata->>'runtime' = 'pgworker' then %(threshold)s * interval '1 second'
  when exists (
    select 1 from :SCHEMA._private_jobs as jobs
    where jobs.locked_by = workers.id
    and jobs.flags->'infrastructure_resilient' = 'true'::jsonb
  ) then 3 * %(foreign_threshold)s * interval '1 second'
  else %(foreign_threshold)s * interval '1 second'
end
order by workers.id
for update skip locked

-- name: recover_dead_workers
-- Give back the jobs and queues of these dead workers and forget them. The attempt is
-- refunded and last_error counts the recoveries in a row; a job whose worker died with
-- it more than %(max_recoveries)s times in a row is failed for good instead (it is
-- probably what kills them). Returns each job with its worker and whether it failed.
with dead as (
  select unnest(%(worker_ids)s::text[]) as id
),
counted as (
  select
    jobs.id,
    jobs.locked_by,
    coalesce(substring(jobs.last_error from '; recovery ([0-9]{1,9}) in a row$')::int, 0) + 1
      as recoveries
  from :SCHEMA._private_jobs as jobs
  join dead on dead.id = jobs.locked_by
),
recovered as (
  update :SCHEMA._private_jobs as jobs
  set
    locked_by = null,
    locked_at = null,
    attempts = case
      when counted.recoveries > %(max_recoveries)s then jobs.max_attempts
      else greatest(0, jobs.attempts - 1)
    end,
    run_at = greatest(jobs.run_at, now()),
    last_error = case
      when counted.recoveries > %(max_recoveries)s then format(
        'Failed for good: its worker died while running it %%s times in a row '
        '(last: %%s); pgworker stops retrying a job that may be what kills its workers',
        counted.recoveries, counted.locked_by)
      else format(
        'Recovered from dead worker %%s (no heartbeat); recovery %%s in a row',
        counted.locked_by, counted.recoveries)
    end,
    updated_at = now()
  from counted
  where jobs.id = counted.id
  and jobs.locked_by = counted.locked_by
  returning jobs.id, counted.locked_by, counted.recoveries > %(max_recoveries)s
),
unlocked_queues as (
  update :SCHEMA._private_job_queues as job_queues
  set locked_by = null, locked_at = null
  where job_queues.locked_by in (select id from dead)
),
forgotten as (
  delete from :SCHEMA._private_workers as workers
  where workers.id in (select id from dead)
)
select * from recovered

-- name: release_unheld
-- After a claim whose answer was lost (the connection broke after it committed): give
-- back the jobs locked by this worker that it does not hold (attempt refunded, run_at
-- kept), and unlock its queues that hold none of its held jobs. Returns the job ids.
with released as (
  update :SCHEMA._private_jobs as jobs
  set locked_by = null, locked_at = null, attempts = greatest(0, jobs.attempts - 1)
  where jobs.locked_by = %(worker_id)s
  and jobs.id <> all(%(held)s::bigint[])
  returning jobs.id
),
unlocked_queues as (
  update :SCHEMA._private_job_queues as job_queues
  set locked_by = null, locked_at = null
  where job_queues.locked_by = %(worker_id)s
  and not exists (
    select 1 from :SCHEMA._private_jobs as jobs
    where jobs.job_queue_id = job_queues.id and jobs.id = any(%(held)s::bigint[])
  )
)
select id from released

-- name: reset_stale_locks
-- graphile-worker's rule for owners that never heartbeat (Node workers): unlock jobs and
-- queues locked more than 4 hours ago. Owners in the registry are left to the sweep, so
-- a live worker's long job is never taken away here.
with jobs_reset as (
  update :SCHEMA._private_jobs as jobs
  set locked_at = null, locked_by = null, run_at = greatest(jobs.run_at, now())
  where jobs.locked_at < now() - interval '4 hours'
  and not exists (
    select 1 from :SCHEMA._private_workers as workers where workers.id = jobs.locked_by
  )
)
update :SCHEMA._private_job_queues as job_queues
set locked_at = null, locked_by = null
where job_queues.locked_at < now() - interval '4 hours'
and not exists (
  select 1 from :SCHEMA._private_workers as workers where workers.id = job_queues.locked_by
)

-- name: list_workers
-- The registry with what each worker holds, plus lock owners that are not in it (Node
-- workers, or workers swept while alive), oldest start first.
select
  workers.id,
  true as registered,
  workers.started_at,
  workers.last_heartbeat_at,
  extract(epoch from now() - workers.last_heartbeat_at)::float8 as heartbeat_age,
  workers.metadata::text,
  (select count(*) from :SCHEMA._private_jobs as jobs where jobs.locked_by = workers.id)
    as jobs_held,
  (select count(*) from :SCHEMA._private_job_queues as job_queues
   where job_queues.locked_by = workers.id) as queues_held
from :SCHEMA._private_workers as workers
union all
select
  jobs.locked_by, false, min(jobs.locked_at), null, null, null, count(*), 0
from :SCHEMA._private_jobs as jobs
where jobs.locked_by is not null
and not exists (
  select 1 from :SCHEMA._private_workers as workers where workers.id = jobs.locked_by
)
group by jobs.locked_by
order by 3

-- name: unserved_tasks
-- Task identifiers with runnable jobs that no registered worker lists in its metadata
-- (only pgworker workers list their tasks).
select tasks.identifier, count(*)
from :SCHEMA._private_jobs as jobs
join :SCHEMA._private_tasks as tasks on tasks.id = jobs.task_id
where jobs.is_available and jobs.run_at <= now()
and not exists (
  select 1 from :SCHEMA._private_workers as workers
  where workers.metadata->'tasks' ? tasks.identifier
)
group by tasks.identifier
order by tasks.identifier
