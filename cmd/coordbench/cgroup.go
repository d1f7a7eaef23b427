package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// -etcd-cpu puts etcd's process into a cgroup of its own whose CPU quota is
// that many CPUs, so that etcd is the bottleneck, as a shared or managed etcd
// is in front of many app hosts: the frame users run coordproxy in. cgroup
// v2 (cpu.max) or v1 (cpu.cfs_quota_us), as the machine has; it needs root.

// cgroupPeriodUS is the quota's period: 10 ms, so that a capped etcd runs
// like a slower CPU rather than stalling for most of the kernel's default
// 100 ms period once its quota is spent (a stall every request waits out,
// whoever queued it).
const cgroupPeriodUS = 10000

// capCPU caps process pid at cpus CPUs in a new cgroup named name; undo
// removes the cgroup once the process has exited.
func capCPU(pid int, cpus float64, name string) (undo func(), err error) {
	if cpus <= 0 {
		return nil, fmt.Errorf("want a positive number of CPUs, got %g", cpus)
	}
	quota := int64(cpus * cgroupPeriodUS)
	pidText := []byte(strconv.Itoa(pid))
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil { // v2
		// The root must hand the cpu controller to its children.
		os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu"), 0o644)
		dir := filepath.Join("/sys/fs/cgroup", name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		undo = func() { os.Remove(dir) }
		if err := os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", quota, cgroupPeriodUS), 0o644); err != nil {
			undo()
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pidText, 0o644); err != nil {
			undo()
			return nil, err
		}
		return undo, nil
	}
	base := "/sys/fs/cgroup/cpu"
	if _, err := os.Stat(filepath.Join(base, "cpu.cfs_quota_us")); err != nil {
		return nil, errors.New("no cgroup cpu controller found (neither v2 nor v1's /sys/fs/cgroup/cpu)")
	}
	dir := filepath.Join(base, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	undo = func() { os.Remove(dir) }
	for _, w := range []struct {
		file string
		val  []byte
	}{
		{"cpu.cfs_period_us", []byte(strconv.Itoa(cgroupPeriodUS))},
		{"cpu.cfs_quota_us", []byte(strconv.FormatInt(quota, 10))},
		{"cgroup.procs", pidText},
	} {
		if err := os.WriteFile(filepath.Join(dir, w.file), w.val, 0o644); err != nil {
			undo()
			return nil, err
		}
	}
	return undo, nil
}
