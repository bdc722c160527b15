//go:build linux

package sysmem

import (
	"os"
	"testing"
)

// cgroupLimit reads v1 and v2 limits, of the cgroup and its ancestors,
// and ignores "max", v1's huge "no limit" and unreadable files.
func TestCgroupLimit(t *testing.T) {
	files := map[string]string{
		"/sys/fs/cgroup/memory/a/memory.limit_in_bytes":   "9223372036854771712\n",
		"/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes": "8589934592\n",
		"/sys/fs/cgroup/k8s/memory.max":                   "4294967296\n",
		"/sys/fs/cgroup/k8s/pod/memory.max":               "max\n",
		"/sys/fs/cgroup/unified/u/memory.max":             "1000\n",
	}
	read := func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}
	cases := []struct {
		self string
		want int64
	}{
		{"4:memory:/a/b\n0::/\n", 8589934592},
		{"4:memory:/a\n", 0},
		{"0::/k8s/pod\n", 4294967296},
		{"0::/u\n", 1000},
		{"7:cpu,memory:/a/b\n", 8589934592},
		{"3:cpuset:/a/b\n", 0},
		{"garbage\n\n", 0},
		{"0::/k8s/pod\n4:memory:/a/b\n", 4294967296},
	}
	for _, c := range cases {
		if got := cgroupLimit(c.self, "/sys/fs/cgroup", read); got != c.want {
			t.Errorf("cgroupLimit(%q) = %d, want %d", c.self, got, c.want)
		}
	}
	if m, l := Machine(), Limit(); m <= 0 || l <= 0 || l > m {
		t.Errorf("Machine() = %d, Limit() = %d", m, l)
	}
}
