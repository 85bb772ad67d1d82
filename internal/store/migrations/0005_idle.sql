-- 0005: idle auto-stop. idle_timeout_s > 0: the daemon stops the running VM
-- (gracefully, the normal stop path) once nothing has used it for that many
-- seconds (`vm create|run|set --idle-timeout`); 0 = never (the default).
-- stop_reason / stopped_at: why and when the daemon last stopped the VM on
-- its own ('' / 0 when it did not; cleared at the next start).

ALTER TABLE vms ADD COLUMN idle_timeout_s INTEGER NOT NULL DEFAULT 0 CHECK (idle_timeout_s >= 0);
ALTER TABLE vms ADD COLUMN stop_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN stopped_at INTEGER NOT NULL DEFAULT 0;
