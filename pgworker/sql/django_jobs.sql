-- Statements of pgworker.contrib.django on the worker schema (:SCHEMA is graphile-worker's).

-- name: django_job_by_key
-- The job of one Django task result (its job_key is "django:" and the result id), with its
-- payload as text: a job still waiting, running, retrying or failed for good.
select jobs.id, tasks.identifier, jobs.priority, jobs.run_at, jobs.attempts,
  jobs.max_attempts, jobs.last_error, jobs.created_at, jobs.locked_at, jobs.locked_by,
  jobs.payload::text
from :SCHEMA._private_jobs as jobs
join :SCHEMA._private_tasks as tasks on tasks.id = jobs.task_id
where jobs.key = %(key)s
