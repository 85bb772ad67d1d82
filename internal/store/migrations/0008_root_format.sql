-- 0008: how a VM's root disk was made, recorded when banger makes it.
-- vms.root_format: the format handed to the VMM ('raw' or 'qcow2'), read
-- from here and never detected from the file: the guest owns the disk's
-- bytes and could write a qcow2 header into a raw disk to make QEMU open a
-- host file as its backing. Rows from before are raw.
-- vms.root_backing: the absolute path of the file a qcow2 root disk reads
-- through (an image's rootfs.ext4), '' when the disk stands alone. That file
-- must not change or go while the row exists (`image rm` refuses).

ALTER TABLE vms ADD COLUMN root_format TEXT NOT NULL DEFAULT 'raw' CHECK (root_format IN ('raw', 'qcow2'));
ALTER TABLE vms ADD COLUMN root_backing TEXT NOT NULL DEFAULT '';
