-- 0003: per-VM NAT. 1 = the guest's traffic is masqueraded beyond the bridge
-- (applied by the start pipeline's `nat` step; toggled with `vm set --nat`
-- on a stopped VM, effective at the next start).

ALTER TABLE vms ADD COLUMN nat INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1));
