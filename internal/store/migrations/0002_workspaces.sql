-- 0002: workspaces. One prepared host repository per VM; the row goes with
-- the VM (ON DELETE CASCADE). The per-file manifest of the last sync is a
-- file in the VM directory (it can hold 10k+ entries), not a table.

CREATE TABLE workspaces (
    vm_id       TEXT PRIMARY KEY NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    host_path   TEXT NOT NULL CHECK (host_path <> ''),
    guest_path  TEXT NOT NULL CHECK (guest_path <> ''),
    head        TEXT NOT NULL DEFAULT '',
    branch      TEXT NOT NULL DEFAULT '',
    tips        TEXT NOT NULL DEFAULT '',   -- space-separated commit ids the guest has
    files       INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0,
    prepared_at INTEGER NOT NULL,
    synced_at   INTEGER NOT NULL
);
