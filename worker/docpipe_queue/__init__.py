"""The Postgres job queue: schema and migrations, every statement that changes a job, the
consumer (claim loop, completion batching, heartbeats, lease rescue, LISTEN) and read-only
statistics."""
