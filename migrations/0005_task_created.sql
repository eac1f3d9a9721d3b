-- Arrival times per pool, read incrementally for the demand forecast.
CREATE INDEX tasks_created_at ON tasks (created_at);
