// Package cgroup puts each VM's VMM in its own cgroup v2 group with memory
// and CPU limits, under the daemon's own cgroup when that is delegated to
// the daemon's user (cgroup.controllers lists memory and cpu, and the
// daemon may write its cgroup's files). Where it is not, nothing is limited
// and doctor says so.
package cgroup

import "fmt"

// OverheadMiB is what a VMM may use beyond the guest's RAM: its own heap,
// device emulation buffers and, for QEMU under TCG, the translation cache
// (32 MiB by default for system emulation) with room to spare.
const OverheadMiB = 256

// CPUPeriod is the cpu.max period in microseconds (the kernel's default).
const CPUPeriod = 100000

// MemoryMax is memory.max for a VM with memMiB of guest RAM, in bytes.
func MemoryMax(memMiB int) int64 { return int64(memMiB+OverheadMiB) << 20 }

// CPUMax is cpu.max for vcpus virtual CPUs: vcpus full CPUs per period.
func CPUMax(vcpus int) string { return fmt.Sprintf("%d %d", vcpus*CPUPeriod, CPUPeriod) }
