-- Statements of the web dashboard's reads (:SCHEMA is the worker schema).

-- name: dashboard_jobs
-- A page of jobs from the public view, newest first, filtered by task, queue, key and
-- state (derived as in list_jobs).
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
) as listed
where %(state)s::text is null or listed.state = %(state)s
order by listed.id desc
limit %(limit)s offset %(offset)s
