-- The stopped tier: a VM launched to boot once and stop, and the stamps of its stop and start.
ALTER TABLE vms ADD COLUMN stop_after_boot BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE vms ADD COLUMN stopping_at BIGINT;
ALTER TABLE vms ADD COLUMN stopped_at BIGINT;
ALTER TABLE vms ADD COLUMN starting_at BIGINT;
