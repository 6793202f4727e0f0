-- Statements of the per-minute job counts (:SCHEMA is the stats schema, pgworker's own,
-- never graphile-worker's: by default the worker schema's name + _stats).

-- name: stats_lock
-- Serialise the creation of the stats table between processes starting at once.
select pg_advisory_xact_lock(hashtext('pgworker.stats:' || %(schema)s))

-- name: stats_create_schema
-- The stats schema, made when stats are enabled (a StatsPlugin, or the dashboard).
create schema if not exists :SCHEMA

-- name: stats_create_table
-- One row per minute, task and outcome; a worker adds to its rows at each flush.
create table if not exists :SCHEMA.job_minutes (
  minute timestamptz not null,
  task_identifier text not null,
  outcome text not null check (outcome in ('completed', 'failed', 'permanently_failed')),
  count bigint not null check (count >= 0),
  primary key (minute, task_identifier, outcome)
)

-- name: stats_record
-- Add a batch of counts (each minute, task and outcome at most once in a batch).
insert into :SCHEMA.job_minutes as rows (minute, task_identifier, outcome, count)
select * from unnest(
  %(minutes)s::timestamptz[], %(tasks)s::text[], %(outcomes)s::text[], %(counts)s::bigint[]
)
on conflict (minute, task_identifier, outcome)
do update set count = rows.count + excluded.count

-- name: stats_prune
-- Forget the minutes older than the retention period.
delete from :SCHEMA.job_minutes where minute < now() - make_interval(secs => %(keep)s)

-- name: stats_per_minute
-- The counts of every outcome in each minute since a moment, all tasks together.
select minute, outcome, sum(count)::bigint
from :SCHEMA.job_minutes
where minute >= %(since)s
group by minute, outcome
order by minute, outcome
