//go:build unix

package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckPrivateDir covers issue 16 Medium 7: a folder another local
// user prepared (their owner, or a mode that lets them write) is refused.
func TestCheckPrivateDir(t *testing.T) {
	other := 65534 // nobody
	cases := []struct {
		name    string
		mode    os.FileMode
		parent  os.FileMode // 0: the test's temp folder as is
		owner   int         // -1: the test's user
		private bool
		want    string // "" = accepted
	}{
		{"private 0700", 0o700, 0, -1, true, ""},
		{"private 0750 is closed to the group", 0o750, 0, -1, true, ""},
		{"private 0777", 0o777, 0, -1, true, "mode 0777"},
		{"private, another owner", 0o700, 0, other, true, "belongs to user 65534"},
		{"socket folder 0755", 0o755, 0, -1, false, ""},
		{"socket folder 0777 without sticky bit", 0o777, 0, -1, false, "no sticky bit"},
		{"socket folder 1777 (like /tmp)", 0o777 | os.ModeSticky, 0, -1, false, ""},
		{"socket folder of another user", 0o755, 0, other, false, "belongs to user 65534"},
		{"parent writable by others", 0o700, 0o777, -1, true, "lies inside"},
		{"parent writable by others, sticky", 0o700, 0o777 | os.ModeSticky, -1, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.owner >= 0 && os.Geteuid() != 0 {
				t.Skip("changing a folder's owner needs root")
			}
			root := t.TempDir()
			parent := filepath.Join(root, "p")
			if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.parent != 0 {
				if err := os.Chmod(parent, tc.parent); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(parent, "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.owner >= 0 {
				if err := os.Chown(dir, tc.owner, tc.owner); err != nil {
					t.Fatal(err)
				}
			}
			err := CheckPrivateDir(dir, "shm_dir", tc.private)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want an error with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not say %q", err, tc.want)
			case err != nil && !strings.Contains(err.Error(), dir):
				t.Fatalf("error %q does not name the folder", err)
			}
			if err == nil && tc.private {
				if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm()&0o077 != 0 {
					t.Fatalf("accepted private folder left open to others: %v %v", fi.Mode(), err)
				}
			}
		})
	}
}
