//go:build linux

package stream

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// directSupported: Linux has O_DIRECT.
const directSupported = true

// ringAlloc maps the ring outside Go's heap (page-aligned, as O_DIRECT
// needs), so that it does not raise the garbage collector's target.
func ringAlloc(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
}

// ringFree unmaps a ring from ringAlloc.
func ringFree(b []byte) {
	if len(b) > 0 {
		_ = syscall.Munmap(b)
	}
}

// memTotal is the memory this process's page cache can use, in bytes (0:
// unknown): the machine's, or the memory limit of its cgroup (a container's)
// or of any cgroup above it, whichever is least.
func memTotal() int64 {
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) != nil {
		return 0
	}
	mem := int64(si.Totalram) * int64(si.Unit)
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

// pread is one pread(2) of f: no retry at the offset after a short read.
func pread(f *os.File, b []byte, off int64) (int, error) {
	return syscall.Pread(int(f.Fd()), b, off)
}

// errInterrupted is the error of a read a signal interrupted.
var errInterrupted error = syscall.EINTR

// errInvalid is the error O_DIRECT reads fail with where the filesystem or
// the alignment does not suit them.
var errInvalid error = syscall.EINVAL

// openReadDirect opens path for reading with O_DIRECT.
func openReadDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
}

// residentShare is the fraction of the pages holding bs (slices of file
// mappings) that are in the page cache; 1 when it cannot tell (the caller
// then keeps reading through the mapping).
func residentShare(bs [][]byte) float64 {
	page := uintptr(os.Getpagesize())
	var in, all int
	var vec []byte
	for _, b := range bs {
		if len(b) == 0 {
			continue
		}
		start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		lo := start &^ (page - 1)
		n := int((start + uintptr(len(b)) - lo + page - 1) / page)
		region := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(b)), -int(start-lo))), n*int(page))
		if cap(vec) < n {
			vec = make([]byte, n)
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(region))),
			uintptr(len(region)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
			return 1
		}
		for _, v := range vec[:n] {
			in += int(v & 1)
		}
		all += n
	}
	if all == 0 {
		return 1
	}
	return float64(in) / float64(all)
}
