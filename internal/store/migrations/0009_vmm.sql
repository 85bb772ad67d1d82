-- 0009: the VMM that runs each VM (`vm create --vmm`, bangerd --vmm), chosen
-- at create and never changed: its pid file, sockets and disk formats are
-- that driver's. Rows from before ran under QEMU, the only VMM there was.

ALTER TABLE vms ADD COLUMN vmm TEXT NOT NULL DEFAULT 'qemu' CHECK (vmm <> '');
