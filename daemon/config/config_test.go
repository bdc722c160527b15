package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestParseSize(t *testing.T) {
	cases := []struct {
		in    string
		total int64
		want  int64
	}{
		{"1", 0, 1},
		{"512MiB", 0, 512 << 20},
		{"8GB", 0, 8_000_000_000},
		{"1.5GiB", 0, 3 << 29},
		{" 64 kib ", 0, 64 << 10},
		{"50%", 1000, 500},
		{"100%", 1 << 30, 1 << 30},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in, c.total)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q, %d) = %d, %v; want %d", c.in, c.total, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "x", "1XB", "-1", "0", "0.1", "0%", "101%", "50%", "9e99", "1e3"} {
		if _, err := ParseSize(bad, 0); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

// TestBudgetShareOfTheLimit: a percentage memory_budget (the default 50%)
// is a share of the memory the daemon may use, the cgroup's limit where one
// is set (sysmem.Limit, whose cgroup parsing sysmem tests), not of the
// machine's RAM.
func TestBudgetShareOfTheLimit(t *testing.T) {
	clearEnv(t)
	defer func(f func() int64) { memoryLimit = f }(memoryLimit)
	memoryLimit = func() int64 { return 16 << 30 }
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.MemoryBudget != 8<<30 {
		t.Errorf("default budget under a 16 GiB limit: %d, want 8 GiB", c.MemoryBudget)
	}
	c, err = load(t, "--memory-budget", "25%")
	if err != nil {
		t.Fatal(err)
	}
	if c.MemoryBudget != 4<<30 {
		t.Errorf("25%% of a 16 GiB limit: %d, want 4 GiB", c.MemoryBudget)
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{8 << 30: "8GiB", 1536 << 10: "1536KiB", 1000: "1000B", 0: "0B"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		if n > 0 {
			if back, err := ParseSize(FormatSize(n), 0); err != nil || back != n {
				t.Errorf("round trip of %d: %d, %v", n, back, err)
			}
		}
	}
}

func TestParseAddress(t *testing.T) {
	cases := []struct {
		in, net, addr string
	}{
		{"unix:///run/user/1000/npsfused.sock", "unix", "/run/user/1000/npsfused.sock"},
		{"unix:///tmp/a/../b.sock", "unix", "/tmp/b.sock"},
		{"tcp://127.0.0.1:7000", "tcp", "127.0.0.1:7000"},
		{"tcp://[::1]:7000", "tcp", "[::1]:7000"},
		{"tcp://:7000", "tcp", ":7000"},
	}
	for _, c := range cases {
		a, err := ParseAddress(c.in)
		if err != nil || a.Network != c.net || a.Addr != c.addr {
			t.Errorf("ParseAddress(%q) = %+v, %v", c.in, a, err)
		}
	}
	for _, bad := range []string{"", "unix://rel.sock", "tcp://host", "tcp://host:", "http://x:1", "/tmp/x.sock", "unix:///" + strings.Repeat("a", 120)} {
		if _, err := ParseAddress(bad); err == nil {
			t.Errorf("ParseAddress(%q) accepted", bad)
		}
	}
}

// load parses args with npsfused's flags and loads the configuration.
func load(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return Load(fs)
}

func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, EnvPrefix+"_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/test")
	t.Setenv("XDG_STATE_HOME", "/var/lib/test")
}

func TestPrecedence(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "npsfused.yaml")
	yaml := "workers: 2\nlisten: unix:///tmp/from-file.sock\ndata_roots: [" + dir + "]\nmemory_budget: 1GiB\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	// Defaults only.
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.Addr != "/run/user/test/npsfused/npsfused.sock" || c.Store != "/var/lib/test/npsfused/jobs.db" {
		t.Errorf("defaults: listen %v store %s", c.Listen, c.Store)
	}
	// File over defaults.
	c, err = load(t, "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	if c.Workers != 2 || c.Listen.Addr != "/tmp/from-file.sock" || c.MemoryBudget != 1<<30 || len(c.DataRoots) != 1 {
		t.Errorf("file: %+v", c)
	}
	// Environment over the file (the file named by NPSFUSE_CONFIG).
	t.Setenv("NPSFUSE_CONFIG", file)
	t.Setenv("NPSFUSE_WORKERS", "3")
	t.Setenv("NPSFUSE_TOKENS", "tok-aaaa-1, tok-bbbb-2")
	c, err = load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.Workers != 3 || c.Listen.Addr != "/tmp/from-file.sock" || strings.Join(c.Tokens, "|") != "tok-aaaa-1|tok-bbbb-2" {
		t.Errorf("env: workers %d listen %v tokens %v", c.Workers, c.Listen, c.Tokens)
	}
	// Flags over everything.
	c, err = load(t, "--workers", "4", "--token", "tok-flag-3", "--listen", "tcp://127.0.0.1:7001")
	if err != nil {
		t.Fatal(err)
	}
	if c.Workers != 4 || strings.Join(c.Tokens, "|") != "tok-flag-3" || c.Listen.Network != "tcp" {
		t.Errorf("flags: workers %d tokens %v listen %v", c.Workers, c.Tokens, c.Listen)
	}
}

func TestValidationListsEveryProblem(t *testing.T) {
	clearEnv(t)
	_, err := load(t, "--listen", "tcp://127.0.0.1:7000", "--workers", "0", "--memory-budget", "lots",
		"--data-root", "/definitely/not/here", "--log-level", "loud", "--token", "short")
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("error %v, want ErrConfig", err)
	}
	for _, want := range []string{"bearer tokens are required", "workers must lie", "memory_budget", "data_roots[0]", "log_level", "shorter than 8"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestUnknownFileKey(t *testing.T) {
	clearEnv(t)
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("workerz: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, "--config", file); err == nil || !strings.Contains(err.Error(), `unknown key "workerz"`) {
		t.Errorf("error %v, want unknown key workerz", err)
	}
}

func TestPrintMasksTokens(t *testing.T) {
	clearEnv(t)
	secret := "s3cr3t-token-value"
	c, err := load(t, "--token", secret, "--listen", "tcp://127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := c.Print(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, secret) || !strings.Contains(out, "<masked, 18 chars>") || !strings.Contains(out, "listen: tcp://127.0.0.1:7000") {
		t.Errorf("print-config output:\n%s", out)
	}
}

func TestRoots(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "models", "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "models"), filepath.Join(outside, "back")); err != nil {
		t.Fatal(err)
	}
	r, err := NewRoots(root)
	if err != nil {
		t.Fatal(err)
	}
	ok := []string{root, filepath.Join(root, "models", "a"), filepath.Join(root, "new", "out"), filepath.Join(outside, "back", "a")}
	for _, p := range ok {
		if _, err := r.Check(p); err != nil {
			t.Errorf("Check(%s): %v", p, err)
		}
	}
	bad := []string{outside, filepath.Join(root, "escape"), filepath.Join(root, "escape", "x"), filepath.Join(root, "..", filepath.Base(outside)),
		"relative/path", "/etc/passwd", root + "-sibling"}
	for _, p := range bad {
		if _, err := r.Check(p); !errors.Is(err, ErrOutsideRoots) {
			t.Errorf("Check(%s) = %v, want ErrOutsideRoots", p, err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1", "8GiB", "1.5 kb", "50%", "", "1e9", "99999999999999999999TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s, 1<<40)
		if err == nil && (n < 1 || n > 1<<62) {
			t.Fatalf("ParseSize(%q) = %d outside [1, 2^62]", s, n)
		}
	})
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"unix:///a.sock", "tcp://h:1", "tcp://[::1]:2", "unix://", "tcp://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			return
		}
		back, err := ParseAddress(a.String())
		if err != nil || back != a {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, a, a.String(), back, err)
		}
	})
}

func TestRetentionKeys(t *testing.T) {
	clearEnv(t)
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.RetentionAge != 168*time.Hour || c.RetentionJobs != 10000 || c.RetentionBytes != 0 || c.SessionIdleTimeout != 24*time.Hour {
		t.Errorf("defaults: age %v jobs %d bytes %d idle %v", c.RetentionAge, c.RetentionJobs, c.RetentionBytes, c.SessionIdleTimeout)
	}
	c, err = load(t, "--retention-age", "1h", "--retention-jobs", "5", "--retention-bytes", "2GiB", "--session-idle-timeout", "0")
	if err != nil {
		t.Fatal(err)
	}
	if c.RetentionAge != time.Hour || c.RetentionJobs != 5 || c.RetentionBytes != 2<<30 || c.SessionIdleTimeout != 0 {
		t.Errorf("flags: %+v", c)
	}
	var buf bytes.Buffer
	if err := c.Print(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"retention_age: 1h0m0s", "retention_jobs: 5", "retention_bytes: 2GiB", "session_idle_timeout: 0s"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("printed configuration lacks %q:\n%s", want, buf.String())
		}
	}
	_, err = load(t, "--retention-age", "-1h", "--retention-jobs", "-2", "--retention-bytes", "lots", "--session-idle-timeout", "-1s")
	for _, want := range []string{"retention_age must be ≥ 0", "retention_jobs must be ≥ 0", "retention_bytes:", "session_idle_timeout must be ≥ 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}
