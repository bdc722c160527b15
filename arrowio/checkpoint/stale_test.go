package checkpoint

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

// TestRemoveStale covers issue 16 Low 11: temporary folders of killed runs
// are removed by the next run into the same destination; those of live
// processes, other hosts, or without an owner record are kept.
func TestRemoveStale(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("process start times come from /proc")
	}
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	me := self()
	if me.Start == 0 {
		t.Fatal("no start time for this process")
	}
	cases := []struct {
		name  string
		owner *owner // nil: no record
		gone  bool
	}{
		{"exited process", &owner{PID: exited.Process.Pid, Start: 1, Host: me.Host}, true},
		{"PID reused by a later process", &owner{PID: me.PID, Start: me.Start - 1, Host: me.Host}, true},
		{"live process", &me, false},
		{"another host", &owner{PID: exited.Process.Pid, Start: 1, Host: me.Host + "-elsewhere"}, false},
		{"no owner record", nil, false},
	}
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	var want []string
	for i, c := range cases {
		dir := filepath.Join(parent, ".out.npsfuse-tmp-"+string(rune('a'+i)))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if c.owner != nil {
			b, _ := json.Marshal(c.owner)
			if err := os.WriteFile(filepath.Join(dir, ownerFile), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if c.gone {
			want = append(want, dir)
		}
	}
	// Another destination's temporary folder is never looked at.
	other := filepath.Join(parent, ".other.npsfuse-tmp-x")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	o, err := NewOutput(out, false)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Abort()
	if !slices.Equal(o.Stale, want) {
		t.Fatalf("removed %v, want %v", o.Stale, want)
	}
	for i, c := range cases {
		dir := filepath.Join(parent, ".out.npsfuse-tmp-"+string(rune('a'+i)))
		if _, err := os.Stat(dir); (err == nil) == c.gone {
			t.Errorf("%s: folder exists %v, want removed %v", c.name, err == nil, c.gone)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another destination's folder was removed: %v", err)
	}
	// The new folder records its writer, and Commit drops the record.
	if _, err := os.Stat(filepath.Join(o.Dir(), ownerFile)); err != nil {
		t.Fatalf("no owner record in the new temporary folder: %v", err)
	}
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, ownerFile)); !os.IsNotExist(err) {
		t.Fatalf("the owner record reached the output: %v", err)
	}
}
