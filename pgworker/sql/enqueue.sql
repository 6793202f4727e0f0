-- pgworker's SECURITY DEFINER enqueue functions, for application roles that may add jobs
-- and do nothing else (docs/permissions.md). They live in a schema of pgworker's own,
-- :ENQUEUE, never in the worker schema :SCHEMA, which stays as graphile-worker made it.
-- Same conventions as queries.sql; :ROLE stands for the quoted name of a role.

-- name: schema_owner
-- Who owns the worker schema's jobs table (null if it is not installed), and who we are.
select pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text
from pg_catalog.pg_class as c
inner join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
where n.nspname = %(schema)s and c.relname = '_private_jobs'

-- name: install_functions
-- Create (or update) the schema and its two functions, owned by the role running this
-- (the worker schema's owner). They run as that owner, so: search_path pinned to
-- pg_catalog (a caller's own functions or operators can't stand in for the built-ins
-- that add_job and add_jobs call), every name schema-qualified, nothing returned but ids
-- (add_job's row would show the payload of another job to unsafe_dedupe), and no
-- EXECUTE for PUBLIC: only the roles granted it may call them.
create schema if not exists :ENQUEUE;

create or replace function :ENQUEUE.add_job(
  identifier text,
  payload json default null,
  queue_name text default null,
  run_at timestamptz default null,
  max_attempts integer default null,
  job_key text default null,
  priority integer default null,
  flags text[] default null,
  job_key_mode text default 'replace'
) returns bigint
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  select jobs.id
  from :SCHEMA.add_job(
    identifier => identifier,
    payload => payload,
    queue_name => queue_name,
    run_at => run_at,
    max_attempts => max_attempts,
    job_key => job_key,
    priority => priority,
    flags => flags,
    job_key_mode => job_key_mode
  ) as jobs
$$;

revoke all on function :ENQUEUE.add_job(
  text, json, text, timestamptz, integer, text, integer, text[], text
) from public;

-- specs: a JSON array of objects with job_spec's fields (identifier, payload,
-- queue_name, run_at, max_attempts, job_key, priority, flags). Ids come back in the
-- order of the specs.
create or replace function :ENQUEUE.add_jobs(
  specs json,
  job_key_preserve_run_at boolean default false
) returns setof bigint
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
  select jobs.id
  from :SCHEMA.add_jobs(
    array(select pg_catalog.json_populate_recordset(cast(null as :SCHEMA.job_spec), specs)),
    job_key_preserve_run_at
  ) as jobs
$$;

revoke all on function :ENQUEUE.add_jobs(json, boolean) from public;

-- name: grant_enqueue
-- Let one role call the two functions (and nothing else: no privilege on :SCHEMA).
grant usage on schema :ENQUEUE to :ROLE;
grant execute on function
  :ENQUEUE.add_job(text, json, text, timestamptz, integer, text, integer, text[], text),
  :ENQUEUE.add_jobs(json, boolean)
to :ROLE;

-- name: revoke_enqueue
-- Take that back from one role.
revoke execute on function
  :ENQUEUE.add_job(text, json, text, timestamptz, integer, text, integer, text[], text),
  :ENQUEUE.add_jobs(json, boolean)
from :ROLE;
revoke usage on schema :ENQUEUE from :ROLE;

-- name: definer_add_job
-- Add one job through the definer function: its id, and the transaction's now() (what
-- add_job used for created_at and a default run_at).
select added.id, now()
from :ENQUEUE.add_job(
  identifier => %(identifier)s,
  payload => %(payload)s::json,
  queue_name => %(queue_name)s,
  run_at => %(run_at)s,
  max_attempts => %(max_attempts)s,
  job_key => %(job_key)s,
  priority => %(priority)s,
  flags => %(flags)s::text[],
  job_key_mode => %(job_key_mode)s
) as added (id)

-- name: definer_add_jobs
-- Add a batch through the definer function: the ids in the order of the specs, each with
-- the transaction's now().
select added.id, now()
from :ENQUEUE.add_jobs(%(specs)s::json, %(preserve_run_at)s) with ordinality as added (id, n)
order by added.n
