package checkpoint

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ownerFile, inside a temporary output folder, names the process writing
// it, so that a later run can tell a folder left by a killed process
// (kill -9, power loss) from one another process is still writing. It is
// removed before the folder is committed.
const ownerFile = ".npsfuse-owner"

// owner identifies a process across PID reuse: its PID, its start time
// (clock ticks since boot, /proc/PID/stat field 22) and the host.
type owner struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	Host  string `json:"host"`
}

// self is the calling process as an owner (Start 0 where /proc is absent).
func self() owner {
	h, _ := os.Hostname()
	st, _ := startTime(os.Getpid())
	return owner{PID: os.Getpid(), Start: st, Host: h}
}

// startTime reads a process's start time from /proc/PID/stat.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 20 {
		return 0, os.ErrInvalid
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// dead reports whether the owner recorded in a temporary folder has
// certainly exited: same host, and no process with its PID and start
// time. Anything uncertain (another host, no /proc, no record) is alive.
func (o owner) dead() bool {
	if h, _ := os.Hostname(); o.PID <= 0 || o.Start == 0 || o.Host != h {
		return false
	}
	st, err := startTime(o.PID)
	if os.IsNotExist(err) {
		return true
	}
	return err == nil && st != o.Start
}

// markOwner records the calling process as the writer of tmp.
func markOwner(tmp string) error {
	b, _ := json.Marshal(self())
	return os.WriteFile(filepath.Join(tmp, ownerFile), b, 0o600)
}

// RemoveStale deletes the temporary folders beside dir (".<name>.npsfuse-
// tmp-*") whose writer has certainly exited, and returns their paths.
// Folders of live processes, of other hosts or without an owner record
// (written by an older npsfuse) are kept.
func RemoveStale(dir string) []string {
	dir = filepath.Clean(dir)
	pattern := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".npsfuse-tmp-*")
	matches, _ := filepath.Glob(pattern)
	var removed []string
	for _, m := range matches {
		b, err := ReadRegular(filepath.Join(m, ownerFile))
		if err != nil {
			continue
		}
		var o owner
		if json.Unmarshal(b, &o) != nil || !o.dead() {
			continue
		}
		if os.RemoveAll(m) == nil {
			removed = append(removed, m)
		}
	}
	return removed
}
