-- Remote Docker over TLS: where a VM's daemon listens (NULL: no daemon configured), and the
-- client certificate issued to a task.
ALTER TABLE vms ADD COLUMN docker_host TEXT;
ALTER TABLE tasks ADD COLUMN docker_client_cert TEXT;
ALTER TABLE tasks ADD COLUMN docker_client_key TEXT;
