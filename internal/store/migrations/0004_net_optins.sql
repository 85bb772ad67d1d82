-- 0004: per-VM network opt-ins, both off by default and toggled with
-- `vm set` on a stopped VM (effective at the next start).
-- host_access = 1: the guest may reach services on any host address (without
--   it only the gateway's DNS answers; replies to host-opened connections
--   always pass).
-- nat_private = 1: with nat, the guest may also reach private and special
--   ranges beyond the host (10/8, 172.16/12, 192.168/16, 100.64/10, ...);
--   link-local 169.254/16 stays blocked regardless.

ALTER TABLE vms ADD COLUMN host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1));
ALTER TABLE vms ADD COLUMN nat_private INTEGER NOT NULL DEFAULT 0 CHECK (nat_private IN (0, 1));
