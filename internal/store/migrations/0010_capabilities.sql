-- 0010: the capabilities a VM was created with (`vm create --cap NAME[@VERSION]`),
-- in the order given (pos), and the state of each as of the last start:
-- pending (never started), preparing, starting, ready, failed (error says
-- why), stopped. Rows go with the VM.

CREATE TABLE vm_capabilities (
    vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (name <> ''),
    version    TEXT NOT NULL DEFAULT '',
    pos        INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending',
    error      TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (vm_id, name)
);
