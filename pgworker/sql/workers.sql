-- Revision 20: the worker registry of the Rust port (graphile_worker 0.13), so that
-- pgworker, Rust and Node workers can share one schema. Same table, index and function
-- signatures as the Rust crate installs; Node graphile-worker 0.17 ignores all of it.
-- :SCHEMA stands for the quoted schema name. Safe to run twice.

create table if not exists :SCHEMA._private_workers (
  id text primary key,
  last_heartbeat_at timestamptz not null,
  started_at timestamptz not null default now(),
  metadata jsonb
);

create index if not exists _private_workers_last_heartbeat_at_idx
  on :SCHEMA._private_workers (last_heartbeat_at);

-- Register a worker, or say it is still alive; a null metadata keeps the stored one.
create or replace function :SCHEMA.worker_heartbeat(
  worker_id text,
  metadata json default null::json
) returns void
language sql
as $$
  insert into :SCHEMA._private_workers as workers (id, last_heartbeat_at, metadata)
  values (worker_heartbeat.worker_id, now(), worker_heartbeat.metadata::jsonb)
  on conflict (id) do update
  set last_heartbeat_at = now(),
      metadata = coalesce(excluded.metadata, workers.metadata);
$$;

-- Forget a worker that stopped cleanly.
create or replace function :SCHEMA.worker_deregister(worker_id text) returns void
language sql
as $$
  delete from :SCHEMA._private_workers as workers
  where workers.id = worker_deregister.worker_id;
$$;

-- Workers whose last heartbeat is older than the threshold.
create or replace function :SCHEMA.list_stale_workers(stale_threshold interval)
returns table(worker_id text)
language sql
as $$
  select workers.id
  from :SCHEMA._private_workers as workers
  where workers.last_heartbeat_at < now() - stale_threshold;
$$;

-- Lock owners with no registry row whose lock is older than the threshold.
create or replace function :SCHEMA.list_orphan_locked_workers(stale_threshold interval)
returns table(worker_id text)
language sql
as $$
  select distinct held.locked_by
  from (
    select jobs.locked_by, jobs.locked_at
    from :SCHEMA._private_jobs as jobs
    where jobs.locked_by is not null
    union all
    select job_queues.locked_by, job_queues.locked_at
    from :SCHEMA._private_job_queues as job_queues
    where job_queues.locked_by is not null
  ) as held
  where held.locked_at < now() - stale_threshold
  and not exists (
    select 1 from :SCHEMA._private_workers as workers where workers.id = held.locked_by
  );
$$;

-- Give back the jobs and queues of dead workers, refunding the attempt; returns how many
-- jobs came back.
create or replace function :SCHEMA.recover_dead_worker_jobs(
  worker_ids text[],
  recovery_delay interval default interval '0 seconds'
) returns integer
language plpgsql
as $$
declare
  recovered integer := 0;
begin
  with released as (
    update :SCHEMA._private_jobs as jobs
    set attempts = greatest(0, jobs.attempts - 1),
        locked_by = null,
        locked_at = null,
        run_at = greatest(jobs.run_at, now() + recovery_delay),
        last_error = 'Job recovered after worker interruption',
        updated_at = now()
    where jobs.locked_by = any(worker_ids)
    returning jobs.id
  )
  select count(*) into recovered from released;

  update :SCHEMA._private_job_queues as job_queues
  set locked_by = null, locked_at = null
  where job_queues.locked_by = any(worker_ids);

  return recovered;
end;
$$;

-- Forget workers that were found dead.
create or replace function :SCHEMA.delete_stale_workers(worker_ids text[]) returns void
language sql
as $$
  delete from :SCHEMA._private_workers as workers
  where workers.id = any(worker_ids);
$$;
