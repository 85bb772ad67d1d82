-- 0006: the sessions (`vm session`) the daemon last saw in each VM, so a
-- stopped VM still lists them (as ended, "vm stopped") and a restarted daemon
-- knows them. Replaced by every list of a running VM; running rows are marked
-- ended when the VM stops. Guest text (command, dir, last_output, reason) is
-- stored as the guest agent reported it, after the host's checks.

CREATE TABLE vm_sessions (
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    command     TEXT NOT NULL,
    dir         TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL CHECK (state IN ('running', 'exited', 'ended')),
    exit_code   INTEGER CHECK (exit_code IS NULL OR (exit_code >= 0 AND exit_code <= 255)),
    reason      TEXT NOT NULL DEFAULT '',
    pid         INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL DEFAULT 0,
    last_output TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (vm_id, name)
);
