-- 0001: VMs, kernels and images. Timestamps are Unix nanoseconds (UTC).
-- Empty strings, not NULLs, mean "not set": the Go structs have no pointers.

CREATE TABLE kernels (
    name       TEXT PRIMARY KEY NOT NULL CHECK (name <> ''),
    version    TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL DEFAULT '',
    path       TEXT NOT NULL DEFAULT '',
    initrd     TEXT NOT NULL DEFAULT '',
    sha256     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

CREATE TABLE images (
    name       TEXT PRIMARY KEY NOT NULL CHECK (name <> ''),
    source     TEXT NOT NULL DEFAULT '',
    path       TEXT NOT NULL DEFAULT '',
    kernel_ref TEXT NOT NULL DEFAULT '',
    size_bytes INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE vms (
    id              TEXT PRIMARY KEY NOT NULL CHECK (id <> ''),
    name            TEXT NOT NULL UNIQUE CHECK (name <> ''),
    image           TEXT NOT NULL DEFAULT '',
    kernel          TEXT NOT NULL DEFAULT '',
    vcpu            INTEGER NOT NULL DEFAULT 0,
    memory_mib      INTEGER NOT NULL DEFAULT 0,
    disk_bytes      INTEGER NOT NULL DEFAULT 0,
    work_disk_bytes INTEGER NOT NULL DEFAULT 0,
    guest_ip        TEXT NOT NULL DEFAULT '',
    mac             TEXT NOT NULL DEFAULT '',
    tap             TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL CHECK (state IN ('creating', 'running', 'stopped', 'error')),
    last_error      TEXT NOT NULL DEFAULT '',
    clone_method    TEXT NOT NULL DEFAULT '',
    dir             TEXT NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- Two VMs never share an address, a MAC or a TAP: the allocator can rely on
-- the database to catch a race.
CREATE UNIQUE INDEX vms_guest_ip ON vms (guest_ip) WHERE guest_ip <> '';
CREATE UNIQUE INDEX vms_mac ON vms (mac) WHERE mac <> '';
CREATE UNIQUE INDEX vms_tap ON vms (tap) WHERE tap <> '';
CREATE INDEX vms_created ON vms (created_at);
