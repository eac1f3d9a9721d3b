-- Queue times (assigned_at - created_at) of recent tasks, for the published p95.
CREATE INDEX tasks_assigned_at ON tasks (assigned_at);
