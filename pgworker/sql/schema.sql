-- The graphile-worker schema at revision 19 (Node graphile-worker 0.17), installed in
-- one transaction on an empty database. :SCHEMA stands for the quoted schema name.
-- Object names, column order and constraint names follow graphile-worker exactly,
-- because Node and Rust workers read these tables directly.
-- The SQL functions are installed separately, from functions.sql.

create schema if not exists :SCHEMA;

create table if not exists :SCHEMA.migrations (
  id int constraint migrations_pkey primary key,
  ts timestamptz not null default now(),
  breaking boolean not null default false
);

create table :SCHEMA._private_tasks (
  id int generated always as identity (sequence name :SCHEMA.tasks_id_seq)
    constraint tasks_pkey primary key,
  identifier text not null
    constraint tasks_identifier_key unique
    constraint tasks_identifier_check check (length(identifier) <= 128)
);

create table :SCHEMA._private_job_queues (
  id int generated always as identity (sequence name :SCHEMA.job_queues_id_seq)
    constraint job_queues_pkey1 primary key,
  queue_name text not null
    constraint job_queues_queue_name_key unique
    constraint job_queues_queue_name_check check (length(queue_name) <= 128),
  locked_at timestamptz,
  locked_by text,
  is_available boolean not null generated always as (locked_at is null) stored
);

create table :SCHEMA._private_jobs (
  id bigint generated always as identity (sequence name :SCHEMA.jobs_id_seq1)
    constraint jobs_pkey1 primary key,
  -- No foreign keys on purpose: they would slow down every insert and delete.
  job_queue_id int,
  task_id int not null,
  payload json not null default '{}'::json,
  priority smallint not null default 0,
  run_at timestamptz not null default now(),
  attempts smallint not null default 0,
  max_attempts smallint not null default 25
    constraint jobs_max_attempts_check check (max_attempts >= 1),
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  key text
    constraint jobs_key_key1 unique
    constraint jobs_key_check check (length(key) > 0 and length(key) <= 512),
  locked_at timestamptz,
  locked_by text,
  revision int not null default 0,
  flags jsonb,
  is_available boolean not null
    generated always as (locked_at is null and attempts < max_attempts) stored
);

-- The fetch query walks this index in (priority, run_at) order.
create index jobs_main_index on :SCHEMA._private_jobs
  using btree (priority, run_at) include (id, task_id, job_queue_id)
  where is_available = true;

create index jobs_no_queue_index on :SCHEMA._private_jobs
  using btree (priority, run_at) include (id, task_id)
  where is_available = true and job_queue_id is null;

create table :SCHEMA._private_known_crontabs (
  identifier text not null constraint known_crontabs_pkey primary key,
  known_since timestamptz not null,
  last_execution timestamptz
);

-- Row level security with no policy: only the owning role (the one that migrated)
-- sees the private tables.
alter table :SCHEMA._private_tasks enable row level security;
alter table :SCHEMA._private_job_queues enable row level security;
alter table :SCHEMA._private_jobs enable row level security;
alter table :SCHEMA._private_known_crontabs enable row level security;

create type :SCHEMA.job_spec as (
  identifier text,
  payload json,
  queue_name text,
  run_at timestamptz,
  max_attempts smallint,
  job_key text,
  priority smallint,
  flags text[]
);

-- The stable, public way to read jobs. It leaves out the payload on purpose.
create view :SCHEMA.jobs as
  select
    jobs.id,
    job_queues.queue_name,
    tasks.identifier as task_identifier,
    jobs.priority,
    jobs.run_at,
    jobs.attempts,
    jobs.max_attempts,
    jobs.last_error,
    jobs.created_at,
    jobs.updated_at,
    jobs.key,
    jobs.locked_at,
    jobs.locked_by,
    jobs.revision,
    jobs.flags
  from :SCHEMA._private_jobs as jobs
  inner join :SCHEMA._private_tasks as tasks on tasks.id = jobs.task_id
  left join :SCHEMA._private_job_queues as job_queues on job_queues.id = jobs.job_queue_id;
