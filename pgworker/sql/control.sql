-- Statements that control jobs while they run: cancel requests. Same conventions as
-- queries.sql.

-- name: request_cancel
-- Cancel one job: a job that isn't running is deleted; a running one gets the
-- pgworker_cancel flag and the reason in last_error, for the worker running it to see
-- (durably: a worker whose listener is down finds it by polling). Says which it did.
with removed as (
  delete from :SCHEMA._private_jobs as jobs
  where jobs.id = %(job_id)s and jobs.locked_at is null
  returning jobs.id
),
flagged as (
  update :SCHEMA._private_jobs as jobs
  set
    flags = coalesce(jobs.flags, '{}'::jsonb) || '{"pgworker_cancel": true}'::jsonb,
    last_error = %(message)s,
    updated_at = now()
  where jobs.id = %(job_id)s and jobs.locked_at is not null
  returning jobs.id, jobs.locked_by
)
select 'removed', null from removed
union all
select 'cancelling', flagged.locked_by from flagged

-- name: notify_cancel
-- Wake the listeners of workers (the one running the job sees it at once).
select pg_notify('pgworker:cancel', %(job_id)s::text)

-- name: cancel_requests
-- Which of these running jobs have been cancelled, with the request's last_error.
select jobs.id, jobs.last_error
from :SCHEMA._private_jobs as jobs
where jobs.id = any(%(job_ids)s::bigint[])
and jobs.flags ? 'pgworker_cancel'
