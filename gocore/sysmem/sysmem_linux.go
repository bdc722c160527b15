//go:build linux

// Package sysmem tells how much memory the process may use: the machine's,
// or less where a cgroup (a container) limits it.
package sysmem

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Machine is the machine's memory in bytes (0: unknown).
func Machine() int64 {
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

// Limit is the memory this process may use, in bytes (0: unknown): the
// machine's, or the memory limit of its cgroup (a container's) or of any
// cgroup above it, whichever is least.
func Limit() int64 {
	mem := Machine()
	if mem == 0 {
		return 0
	}
	if self, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		if lim := cgroupLimit(string(self), "/sys/fs/cgroup", os.ReadFile); lim > 0 {
			mem = min(mem, lim)
		}
	}
	return mem
}

// cgroupLimit is the least memory limit set on the cgroups in self (the
// text of /proc/self/cgroup) or their ancestors, under root (cgroup v2's
// memory.max at root or root/unified, v1's memory.limit_in_bytes under
// root/memory); 0 when none is set.
func cgroupLimit(self, root string, read func(string) ([]byte, error)) int64 {
	var best int64
	consider := func(dir, file string) {
		for {
			if b, err := read(filepath.Join(dir, file)); err == nil {
				if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 &&
					v < 1<<62 && (best == 0 || v < best) { // v1's "no limit" is a huge number
					best = v
				}
			}
			if parent := filepath.Dir(dir); parent != dir && strings.HasPrefix(parent, root) {
				dir = parent
				continue
			}
			return
		}
	}
	for _, line := range strings.Split(self, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "": // v2
			consider(filepath.Join(root, parts[2]), "memory.max")
			consider(filepath.Join(root, "unified", parts[2]), "memory.max")
		case slices.Contains(strings.Split(parts[1], ","), "memory"): // v1
			consider(filepath.Join(root, "memory", parts[2]), "memory.limit_in_bytes")
		}
	}
	return best
}
