-- graphile-worker's public SQL functions. :SCHEMA stands for the quoted schema name.
-- Signatures and parameter names are the compatibility contract: Node calls these
-- functions with named arguments. Every statement is "create or replace", so this file
-- also upgrades a database whose add_jobs predates the fix for graphile/worker#580.

-- add_jobs: insert a batch of jobs, or update the pending job that holds each key.
--
-- The #580 fix: without it, a worker could lock a keyed job between the "disarm"
-- update and the upsert below, so that the upsert's "where locked_at is null" matched
-- nothing and the request was silently dropped. Taking an advisory lock per key (in a
-- fixed order, so two batches cannot deadlock) and then row-locking the existing keyed
-- jobs keeps workers (which use SKIP LOCKED) away from those rows until we commit.
-- The lock key, hashtext(job_key), is the one the Rust port uses, so both serialise.
create or replace function :SCHEMA.add_jobs(
  specs :SCHEMA.job_spec[],
  job_key_preserve_run_at boolean default false
) returns setof :SCHEMA._private_jobs
language plpgsql
as $$
declare
  v_key text;
  v_keys text[];
begin
  -- pgworker:functions:2 (migrate.py re-installs this file when the marker differs)
  select array_agg(distinct spec.job_key order by spec.job_key) into v_keys
  from unnest(specs) as spec
  where spec.job_key is not null;

  if v_keys is not null then
    foreach v_key in array v_keys loop
      perform pg_advisory_xact_lock(hashtext(v_key));
    end loop;
    perform 1 from :SCHEMA._private_jobs as jobs
    where jobs.key = any(v_keys)
    for update;
  end if;

  insert into :SCHEMA._private_tasks as tasks (identifier)
  select distinct spec.identifier from unnest(specs) as spec
  on conflict do nothing;

  insert into :SCHEMA._private_job_queues as job_queues (queue_name)
  select distinct spec.queue_name from unnest(specs) as spec
  where spec.queue_name is not null
  on conflict do nothing;

  if v_keys is not null then
    -- A running or permanently failed job gives up its key: it will not be retried,
    -- and the new request becomes a new job (the world changed since it started).
    update :SCHEMA._private_jobs as jobs
    set key = null, attempts = jobs.max_attempts, updated_at = now()
    where jobs.key = any(v_keys)
    and jobs.is_available is not true;
  end if;

  -- The count may overestimate (updates, future jobs); listeners only use it as a hint.
  perform pg_notify(
    'jobs:insert',
    '{"r":' || random()::text || ',"count":' || array_length(specs, 1)::text || '}'
  );

  return query
  insert into :SCHEMA._private_jobs as jobs (
    job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags
  )
  select
    job_queues.id,
    tasks.id,
    coalesce(spec.payload, '{}'::json),
    coalesce(spec.run_at, now()),
    coalesce(spec.max_attempts, 25),
    spec.job_key,
    coalesce(spec.priority, 0),
    (select jsonb_object_agg(flag, true) from unnest(spec.flags) as flag)
  from unnest(specs) with ordinality as spec
  inner join :SCHEMA._private_tasks as tasks on tasks.identifier = spec.identifier
  left join :SCHEMA._private_job_queues as job_queues on job_queues.queue_name = spec.queue_name
  -- Insert (and so number) the jobs in the order of the specs, whatever the join did.
  order by spec.ordinality
  on conflict (key) do update set
    job_queue_id = excluded.job_queue_id,
    task_id = excluded.task_id,
    -- Two array payloads under one key merge: that is how "batch jobs" accumulate.
    payload = case
      when json_typeof(jobs.payload) = 'array' and json_typeof(excluded.payload) = 'array'
        then (jobs.payload::jsonb || excluded.payload::jsonb)::json
      else excluded.payload
    end,
    max_attempts = excluded.max_attempts,
    run_at = case
      when job_key_preserve_run_at is true and jobs.attempts = 0 then jobs.run_at
      else excluded.run_at
    end,
    priority = excluded.priority,
    revision = jobs.revision + 1,
    flags = excluded.flags,
    attempts = 0,
    last_error = null,
    updated_at = now()
  where jobs.locked_at is null
  returning *;
end;
$$;

-- add_job: add one job. Modes replace and preserve_run_at go through add_jobs;
-- unsafe_dedupe returns an existing job with the same key whatever its state.
create or replace function :SCHEMA.add_job(
  identifier text,
  payload json default null,
  queue_name text default null,
  run_at timestamptz default null,
  max_attempts int default null,
  job_key text default null,
  priority int default null,
  flags text[] default null,
  job_key_mode text default 'replace'
) returns :SCHEMA._private_jobs
language plpgsql
as $$
declare
  v_job :SCHEMA._private_jobs;
begin
  if job_key is null or job_key_mode is null or job_key_mode in ('replace', 'preserve_run_at') then
    select * into v_job
    from :SCHEMA.add_jobs(
      array[(
        add_job.identifier,
        add_job.payload,
        add_job.queue_name,
        add_job.run_at,
        add_job.max_attempts::smallint,
        add_job.job_key,
        add_job.priority::smallint,
        add_job.flags
      ):::SCHEMA.job_spec],
      add_job.job_key_mode = 'preserve_run_at'
    )
    limit 1;
    if v_job.id is null then
      raise exception 'add_job(%) created no job', add_job.identifier using errcode = 'GWNOR';
    end if;
    return v_job;
  elsif job_key_mode = 'unsafe_dedupe' then
    insert into :SCHEMA._private_tasks as tasks (identifier)
    values (add_job.identifier)
    on conflict do nothing;
    if add_job.queue_name is not null then
      insert into :SCHEMA._private_job_queues as job_queues (queue_name)
      values (add_job.queue_name)
      on conflict do nothing;
    end if;
    insert into :SCHEMA._private_jobs as jobs (
      job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags
    )
    select
      job_queues.id,
      tasks.id,
      coalesce(add_job.payload, '{}'::json),
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts::smallint, 25::smallint),
      add_job.job_key,
      coalesce(add_job.priority::smallint, 0::smallint),
      (select jsonb_object_agg(flag, true) from unnest(add_job.flags) as flag)
    from :SCHEMA._private_tasks as tasks
    left join :SCHEMA._private_job_queues as job_queues
      on job_queues.queue_name = add_job.queue_name
    where tasks.identifier = add_job.identifier
    on conflict (key) do update set
      -- Touch the row so that it is returned; nothing else about it changes.
      revision = jobs.revision + 1,
      updated_at = now()
    returning * into v_job;
    if v_job.revision = 0 then
      perform pg_notify('jobs:insert', '{"r":' || random()::text || ',"count":1}');
    end if;
    return v_job;
  else
    raise exception
      'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.'
      using errcode = 'GWBKM';
  end if;
end;
$$;

-- remove_job: delete the job holding this key, unless it is running; a running job
-- loses its key and will not be retried.
create or replace function :SCHEMA.remove_job(job_key text)
returns :SCHEMA._private_jobs
language plpgsql strict
as $$
declare
  v_job :SCHEMA._private_jobs;
begin
  delete from :SCHEMA._private_jobs as jobs
  where jobs.key = remove_job.job_key
  and (jobs.locked_at is null or jobs.locked_at < now() - interval '4 hours')
  returning * into v_job;
  if v_job.id is not null then
    perform pg_notify('jobs:insert', '{"r":' || random()::text || ',"count":-1}');
    return v_job;
  end if;
  update :SCHEMA._private_jobs as jobs
  set key = null, attempts = jobs.max_attempts, updated_at = now()
  where jobs.key = remove_job.job_key
  returning * into v_job;
  return v_job;
end;
$$;

-- The admin functions below leave alone any job locked within the last 4 hours.

create or replace function :SCHEMA.complete_jobs(job_ids bigint[])
returns setof :SCHEMA._private_jobs
language sql
as $$
  delete from :SCHEMA._private_jobs as jobs
  where jobs.id = any(job_ids)
  and (jobs.locked_at is null or jobs.locked_at < now() - interval '4 hours')
  returning *;
$$;

create or replace function :SCHEMA.permanently_fail_jobs(
  job_ids bigint[],
  error_message text default null
) returns setof :SCHEMA._private_jobs
language sql
as $$
  update :SCHEMA._private_jobs as jobs
  set
    last_error = coalesce(error_message, 'Manually marked as failed'),
    attempts = jobs.max_attempts,
    updated_at = now()
  where jobs.id = any(job_ids)
  and (jobs.locked_at is null or jobs.locked_at < now() - interval '4 hours')
  returning *;
$$;

create or replace function :SCHEMA.reschedule_jobs(
  job_ids bigint[],
  run_at timestamptz default null,
  priority int default null,
  attempts int default null,
  max_attempts int default null
) returns setof :SCHEMA._private_jobs
language sql
as $$
  update :SCHEMA._private_jobs as jobs
  set
    run_at = coalesce(reschedule_jobs.run_at, jobs.run_at),
    priority = coalesce(reschedule_jobs.priority::smallint, jobs.priority),
    attempts = coalesce(reschedule_jobs.attempts::smallint, jobs.attempts),
    max_attempts = coalesce(reschedule_jobs.max_attempts::smallint, jobs.max_attempts),
    updated_at = now()
  where jobs.id = any(job_ids)
  and (jobs.locked_at is null or jobs.locked_at < now() - interval '4 hours')
  returning *;
$$;

-- force_unlock_workers: release every job and queue locked by these (dead) owners.
create or replace function :SCHEMA.force_unlock_workers(worker_ids text[])
returns void
language sql
as $$
  update :SCHEMA._private_jobs as jobs
  set locked_at = null, locked_by = null
  where jobs.locked_by = any(worker_ids);
  update :SCHEMA._private_job_queues as job_queues
  set locked_at = null, locked_by = null
  where job_queues.locked_by = any(worker_ids);
$$;
