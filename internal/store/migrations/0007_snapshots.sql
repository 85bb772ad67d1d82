-- 0007: pause/resume, snapshots and VMs restored from them.
-- vms.paused: the user paused the VM (`vm pause`); a VM paused only for the
-- length of a snapshot keeps 0, so reconcile resumes it after a crash.
-- vms.origin_snapshot: the snapshot a VM was restored from ('' = booted
-- from its image); `snapshot rm` refuses while a VM names it.
-- vms.work_format: the work disk's format (recorded, never probed).
-- snapshots: one row per directory <state>/snapshots/<id>, inserted after
-- the directory was renamed into place; meta is vmm.SnapshotMeta as JSON.
-- warm_for: the image this snapshot is the warm template of (`image warm`);
-- auto: made by `vm fork`, removed with the last VM restored from it.
-- parent: the snapshot whose files this one's disks read through (a
-- snapshot of a VM restored onto qcow2 overlays); '' when none. A snapshot
-- named as a parent is not removed.

ALTER TABLE vms ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN origin_snapshot TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN work_format TEXT NOT NULL DEFAULT 'raw';

CREATE TABLE snapshots (
	id              TEXT PRIMARY KEY,
	name            TEXT NOT NULL UNIQUE,
	source_vm       TEXT NOT NULL,
	source_vm_id    TEXT NOT NULL,
	image           TEXT NOT NULL,
	kernel          TEXT NOT NULL,
	vcpu            INTEGER NOT NULL,
	memory_mib      INTEGER NOT NULL,
	disk_bytes      INTEGER NOT NULL,
	work_disk_bytes INTEGER NOT NULL,
	root_format     TEXT NOT NULL,
	work_format     TEXT NOT NULL,
	size_bytes      INTEGER NOT NULL,
	meta            TEXT NOT NULL,
	warm_for        TEXT NOT NULL DEFAULT '',
	auto            INTEGER NOT NULL DEFAULT 0,
	parent          TEXT NOT NULL DEFAULT '',
	created_at      INTEGER NOT NULL
);
CREATE INDEX snapshots_warm_for ON snapshots(warm_for);
