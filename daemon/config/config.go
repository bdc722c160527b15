package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"gopkg.in/yaml.v3"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/sysmem"
)

// memoryLimit is the memory a percentage memory_budget is a share of: the
// machine's, or the limit of the daemon's cgroup (its container) where that
// is less, so that a daemon in a pod limited to 16 GiB on a 512 GiB node does
// not plan for 256 GiB. A variable for the tests.
var memoryLimit = sysmem.Limit

// ErrConfig marks an invalid configuration; the message lists every
// problem found, one per line.
var ErrConfig = fault.New(fault.InvalidInput, "invalid npsfused configuration")

// EnvPrefix is the prefix of the environment variables read.
const EnvPrefix = "NPSFUSE"

// Config is the validated configuration of one daemon.
type Config struct {
	// Listen is where the Flight service listens.
	Listen Address
	// Tokens are the accepted bearer tokens (secret: printed masked).
	Tokens []string
	// DataRoots are the directories jobs may read and write, cleaned and
	// resolved through symbolic links.
	DataRoots []string
	// Store is the job store file; Uploads and Results are folders beside it.
	Store, Uploads, Results string
	// ShmDir is where same-host clients exchange Arrow IPC files; it is an
	// implicit data root. "" disables the shared-memory path.
	ShmDir string
	// Workers is how many batch jobs run at once.
	Workers int
	// Threads is how many goroutines a kernel uses (0 = all cores).
	Threads int
	// MemoryBudget is the working memory (bytes) jobs may reserve together.
	MemoryBudget int64
	// MetricsListen is the host:port of the HTTP listener ("" = none).
	MetricsListen string
	// MaxMessageBytes bounds one gRPC message in either direction.
	MaxMessageBytes int64
	// MaxUploadBytes bounds one upload (the sum of its tensors' bytes).
	MaxUploadBytes int64
	// DrainTimeout is how long a shutdown waits for running jobs before it
	// checkpoints them (they resume at the next start).
	DrainTimeout time.Duration
	// StoreSync makes every job-store commit wait for fsync (durable
	// against power loss; without it, against process crashes only).
	StoreSync bool
	// LogLevel is debug, info, warn or error; LogFormat json or text.
	LogLevel, LogFormat string
	// RetentionAge removes a finished job (record and result file) this
	// long after it finished; 0 keeps it.
	RetentionAge time.Duration
	// RetentionJobs keeps at most this many finished jobs (0: no limit).
	RetentionJobs int
	// RetentionBytes bounds the result files of finished jobs together
	// (0: no limit); the oldest jobs go first.
	RetentionBytes int64
	// SessionIdleTimeout cancels a session no client used for this long
	// (0: never).
	SessionIdleTimeout time.Duration
	// Python is the interpreter, with npsfuse installed, that prepares
	// merge configs naming Hugging Face Hub ids, MODEL+LORA or tokenizer
	// keys (npsfuse._prepare, as `npsfuse merge` does): an absolute path, or
	// a command found on PATH (resolved at load). "" refuses such configs.
	Python string
	// File is the configuration file read ("" = none).
	File string
}

// Address is a parsed listen address.
type Address struct {
	Network string // "unix" or "tcp"
	Addr    string // socket path or host:port
}

// String is the URL form: unix:///path or tcp://host:port.
func (a Address) String() string {
	if a.Network == "unix" {
		return "unix://" + a.Addr
	}
	return "tcp://" + a.Addr
}

// ParseAddress reads unix:///abs/path.sock or tcp://host:port.
func ParseAddress(s string) (Address, error) {
	switch {
	case strings.HasPrefix(s, "unix://"):
		p := strings.TrimPrefix(s, "unix://")
		if !filepath.IsAbs(p) {
			return Address{}, fmt.Errorf("listen %q: the socket path must be absolute (unix:///run/user/1000/npsfused.sock)", s)
		}
		if len(p) > 107 {
			return Address{}, fmt.Errorf("listen %q: socket paths are limited to 107 bytes", s)
		}
		return Address{"unix", filepath.Clean(p)}, nil
	case strings.HasPrefix(s, "tcp://"):
		hp := strings.TrimPrefix(s, "tcp://")
		i := strings.LastIndex(hp, ":")
		if i < 0 || hp[i+1:] == "" || strings.ContainsAny(hp, "/ ") {
			return Address{}, fmt.Errorf("listen %q: want tcp://host:port", s)
		}
		return Address{"tcp", hp}, nil
	}
	return Address{}, fmt.Errorf("listen %q: want unix:///path.sock or tcp://host:port", s)
}

// raw is what viper decodes: sizes and the address still as text.
type raw struct {
	Listen         string        `mapstructure:"listen"`
	Tokens         []string      `mapstructure:"tokens"`
	DataRoots      []string      `mapstructure:"data_roots"`
	Store          string        `mapstructure:"store"`
	ShmDir         string        `mapstructure:"shm_dir"`
	Workers        int           `mapstructure:"workers"`
	Threads        int           `mapstructure:"threads"`
	MemoryBudget   string        `mapstructure:"memory_budget"`
	MetricsListen  string        `mapstructure:"metrics_listen"`
	MaxMessageSize string        `mapstructure:"max_message_size"`
	MaxUploadSize  string        `mapstructure:"max_upload_size"`
	DrainTimeout   time.Duration `mapstructure:"drain_timeout"`
	StoreSync      bool          `mapstructure:"store_sync"`
	LogLevel       string        `mapstructure:"log_level"`
	LogFormat      string        `mapstructure:"log_format"`
	RetentionAge   time.Duration `mapstructure:"retention_age"`
	RetentionJobs  int           `mapstructure:"retention_jobs"`
	RetentionBytes string        `mapstructure:"retention_bytes"`
	SessionIdle    time.Duration `mapstructure:"session_idle_timeout"`
	Python         string        `mapstructure:"python"`
}

// Defaults returns the built-in default of every key, for the current
// user's runtime and state directories.
func Defaults() map[string]any {
	return map[string]any{
		"listen":               "unix://" + filepath.Join(RuntimeDir(), "npsfused", "npsfused.sock"),
		"tokens":               []string{},
		"data_roots":           []string{},
		"store":                filepath.Join(StateDir(), "npsfused", "jobs.db"),
		"shm_dir":              defaultShmDir(),
		"workers":              max(1, runtime.NumCPU()/2),
		"threads":              0,
		"memory_budget":        "50%",
		"metrics_listen":       "127.0.0.1:9464",
		"max_message_size":     "64MiB",
		"max_upload_size":      "64GiB",
		"drain_timeout":        "30s",
		"store_sync":           true,
		"log_level":            "info",
		"log_format":           "json",
		"retention_age":        "168h",
		"retention_jobs":       10000,
		"retention_bytes":      "0",
		"session_idle_timeout": "24h",
		"python":               "",
	}
}

// RuntimeDir is $XDG_RUNTIME_DIR, else a per-user folder under the temp dir.
func RuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return d
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("npsfused-%d", os.Getuid()))
}

// StateDir is $XDG_STATE_HOME, else ~/.local/state.
func StateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("npsfused-%d-state", os.Getuid()))
}

func defaultShmDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return fmt.Sprintf("/dev/shm/npsfused-%d", os.Getuid())
	}
	return ""
}

// flagKeys maps flag names to configuration keys.
var flagKeys = map[string]string{
	"listen": "listen", "token": "tokens", "data-root": "data_roots", "store": "store",
	"shm-dir": "shm_dir", "workers": "workers", "threads": "threads", "memory-budget": "memory_budget",
	"metrics-listen": "metrics_listen", "max-message-size": "max_message_size",
	"max-upload-size": "max_upload_size", "drain-timeout": "drain_timeout", "store-sync": "store_sync",
	"log-level": "log_level", "log-format": "log_format",
	"retention-age": "retention_age", "retention-jobs": "retention_jobs", "retention-bytes": "retention_bytes",
	"session-idle-timeout": "session_idle_timeout", "python": "python",
}

// Flags declares npsfused's flags on fs: --config, --print-config,
// --version and one flag per configuration key.
func Flags(fs *pflag.FlagSet) {
	d := Defaults()
	str := func(k string) string { return fmt.Sprint(d[k]) }
	fs.String("config", "", "YAML configuration file (default: $NPSFUSE_CONFIG)")
	fs.Bool("print-config", false, "print the effective configuration (tokens masked) and exit")
	fs.Bool("version", false, "print the version and exit")
	fs.String("listen", str("listen"), "unix:///path.sock or tcp://host:port")
	fs.StringSlice("token", nil, "accepted bearer token (repeatable; prefer NPSFUSE_TOKENS or the file: flags are visible to other users)")
	fs.StringSlice("data-root", nil, "directory jobs may read and write (repeatable)")
	fs.String("store", str("store"), "job store file (uploads and results live beside it)")
	fs.String("shm-dir", str("shm_dir"), "shared-memory folder for same-host tensor exchange (\"\" disables it)")
	fs.Int("workers", d["workers"].(int), "batch jobs run at once")
	fs.Int("threads", 0, "goroutines per kernel (0 = all cores)")
	fs.String("memory-budget", str("memory_budget"), "working memory jobs may reserve (8GiB, or a share of the memory the daemon may use: RAM, or its cgroup's limit)")
	fs.String("metrics-listen", str("metrics_listen"), "host:port for /healthz and /metrics (\"\" disables it)")
	fs.String("max-message-size", str("max_message_size"), "largest gRPC message accepted or sent")
	fs.String("max-upload-size", str("max_upload_size"), "largest upload")
	fs.Duration("drain-timeout", 30*time.Second, "how long shutdown waits for running jobs before checkpointing them")
	fs.Bool("store-sync", true, "fsync every job-store commit")
	fs.String("log-level", str("log_level"), "debug, info, warn or error")
	fs.String("log-format", str("log_format"), "json or text")
	fs.Duration("retention-age", 168*time.Hour, "remove finished jobs and their results this long after they finished (0 = keep)")
	fs.Int("retention-jobs", d["retention_jobs"].(int), "keep at most this many finished jobs, oldest removed first (0 = no limit)")
	fs.String("retention-bytes", str("retention_bytes"), "bound the result files of finished jobs together, oldest removed first (0 = no limit)")
	fs.Duration("session-idle-timeout", 24*time.Hour, "cancel a session no client used for this long (0 = never)")
	fs.String("python", "", "Python interpreter with npsfuse installed, for merge configs with Hub ids, MODEL+LORA or tokenizer keys (\"\" refuses them)")
}

// Load builds the configuration from defaults, the YAML file (--config or
// $NPSFUSE_CONFIG), NPSFUSE_<KEY> environment variables and the parsed
// flags fs, in that increasing order of precedence (viper's own order),
// and validates it. List keys take comma-separated values in the
// environment (NPSFUSE_TOKENS=a,b).
func Load(fs *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	for k, d := range Defaults() {
		v.SetDefault(k, d)
	}
	v.SetEnvPrefix(EnvPrefix)
	v.AutomaticEnv()
	file := os.Getenv(EnvPrefix + "_CONFIG")
	if f := fs.Lookup("config"); f != nil && f.Changed {
		file = f.Value.String()
	}
	if file != "" {
		if err := checkConfigFile(file); err != nil {
			return nil, err
		}
		v.SetConfigFile(file)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("%w: reading %s: %v", ErrConfig, file, err)
		}
		var bad []string
		known := Defaults()
		for _, k := range v.AllKeys() {
			if _, ok := known[k]; !ok && v.InConfig(k) {
				bad = append(bad, fmt.Sprintf("%s: unknown key %q (known: %s)", file, k, strings.Join(sortedKeys(known), ", ")))
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			return nil, fmt.Errorf("%w:\n  - %s", ErrConfig, strings.Join(bad, "\n  - "))
		}
	}
	for name, key := range flagKeys {
		if f := fs.Lookup(name); f != nil {
			if err := v.BindPFlag(key, f); err != nil {
				return nil, fmt.Errorf("%w: flag --%s: %v", ErrConfig, name, err)
			}
		}
	}
	var r raw
	if err := v.Unmarshal(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	r.Tokens, r.DataRoots = trimList(r.Tokens), trimList(r.DataRoots)
	c, err := r.validate()
	if err != nil {
		return nil, err
	}
	c.File = file
	return c, nil
}

// checkConfigFile refuses a configuration path that is missing, a folder,
// or not a regular file (reading a FIFO would block the start forever).
func checkConfigFile(file string) error {
	st, err := os.Stat(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: configuration file %s does not exist", ErrConfig, file)
	case err != nil:
		return fmt.Errorf("%w: configuration file %s: %v", ErrConfig, file, err)
	case st.IsDir():
		return fmt.Errorf("%w: configuration file %s is a directory: --config (or NPSFUSE_CONFIG) names the YAML file itself", ErrConfig, file)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%w: configuration file %s is not a regular file (%s)", ErrConfig, file, st.Mode().Type())
	}
	return nil
}

// trimList drops surrounding blanks and empty entries ("a, b," → [a b]).
func trimList(l []string) []string {
	var out []string
	for _, s := range l {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// validate checks every key and reports all problems at once.
func (r raw) validate() (*Config, error) {
	var bad []string
	add := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	c := &Config{Workers: r.Workers, Threads: r.Threads, MetricsListen: strings.TrimSpace(r.MetricsListen),
		DrainTimeout: r.DrainTimeout, StoreSync: r.StoreSync, LogLevel: strings.ToLower(r.LogLevel),
		LogFormat: strings.ToLower(r.LogFormat)}
	addr, err := ParseAddress(strings.TrimSpace(r.Listen))
	if err != nil {
		add("%v", err)
	}
	c.Listen = addr
	for i, t := range r.Tokens {
		switch {
		case t == "":
			add("tokens[%d] is empty", i)
		case strings.ContainsAny(t, " \t\r\n,"):
			add("tokens[%d] contains white space or a comma", i)
		case len(t) < 8:
			add("tokens[%d] is shorter than 8 characters", i)
		default:
			c.Tokens = append(c.Tokens, t)
		}
	}
	if addr.Network == "tcp" && len(c.Tokens) == 0 {
		add("listen %s is TCP: bearer tokens are required there (set tokens, NPSFUSE_TOKENS or --token)", addr)
	}
	for i, d := range r.DataRoots {
		p, err := resolveRoot(d)
		if err != nil {
			add("data_roots[%d]: %v", i, err)
			continue
		}
		c.DataRoots = append(c.DataRoots, p)
	}
	store := expandHome(strings.TrimSpace(r.Store))
	if !filepath.IsAbs(store) {
		add("store %q must be an absolute path", r.Store)
	} else {
		c.Store = filepath.Clean(store)
		c.Uploads = filepath.Join(filepath.Dir(c.Store), "uploads")
		c.Results = filepath.Join(filepath.Dir(c.Store), "results")
	}
	if s := strings.TrimSpace(r.ShmDir); s != "" {
		if !filepath.IsAbs(s) {
			add("shm_dir %q must be an absolute path", s)
		} else {
			c.ShmDir = filepath.Clean(s)
		}
	}
	if r.Workers < 1 || r.Workers > 1024 {
		add("workers must lie in [1, 1024], got %d", r.Workers)
	}
	if r.Threads < 0 {
		add("threads must be ≥ 0 (0 = all cores), got %d", r.Threads)
	}
	if c.MemoryBudget, err = ParseSize(r.MemoryBudget, memoryLimit()); err != nil {
		add("memory_budget: %v", err)
	}
	if c.MaxMessageBytes, err = ParseSize(r.MaxMessageSize, 0); err != nil {
		add("max_message_size: %v", err)
	} else if c.MaxMessageBytes < 1<<20 || c.MaxMessageBytes > 2<<30-1 {
		add("max_message_size must lie in [1MiB, 2GiB), got %s", r.MaxMessageSize)
	}
	if c.MaxUploadBytes, err = ParseSize(r.MaxUploadSize, 0); err != nil {
		add("max_upload_size: %v", err)
	}
	if c.MetricsListen != "" && !strings.Contains(c.MetricsListen, ":") {
		add("metrics_listen %q: want host:port (or \"\" to disable)", c.MetricsListen)
	}
	if r.DrainTimeout < 0 {
		add("drain_timeout must be ≥ 0, got %v", r.DrainTimeout)
	}
	if r.RetentionAge < 0 {
		add("retention_age must be ≥ 0 (0 = keep), got %v", r.RetentionAge)
	}
	c.RetentionAge = r.RetentionAge
	if r.RetentionJobs < 0 {
		add("retention_jobs must be ≥ 0 (0 = no limit), got %d", r.RetentionJobs)
	}
	c.RetentionJobs = r.RetentionJobs
	if b := strings.TrimSpace(r.RetentionBytes); b != "" && b != "0" {
		if c.RetentionBytes, err = ParseSize(b, 0); err != nil {
			add("retention_bytes: %v", err)
		}
	}
	if r.SessionIdle < 0 {
		add("session_idle_timeout must be ≥ 0 (0 = never), got %v", r.SessionIdle)
	}
	c.SessionIdleTimeout = r.SessionIdle
	if py := expandHome(strings.TrimSpace(r.Python)); py != "" {
		if !filepath.IsAbs(py) && strings.ContainsRune(py, filepath.Separator) {
			add("python %q: give an absolute path or a command name found on PATH", r.Python)
		} else if p, err := exec.LookPath(py); err != nil {
			add("python %q: %v", r.Python, err)
		} else if c.Python, err = filepath.Abs(p); err != nil {
			add("python %q: %v", r.Python, err)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("log_level %q: want debug, info, warn or error", r.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		add("log_format %q: want json or text", r.LogFormat)
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return nil, fmt.Errorf("%w:\n  - %s", ErrConfig, strings.Join(bad, "\n  - "))
	}
	return c, nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			return filepath.Join(h, strings.TrimPrefix(p, "~"))
		}
	}
	return p
}

// resolveRoot cleans an absolute directory path and resolves its links.
func resolveRoot(d string) (string, error) {
	d = expandHome(strings.TrimSpace(d))
	if !filepath.IsAbs(d) {
		return "", fmt.Errorf("%q must be an absolute path", d)
	}
	p, err := filepath.EvalSymlinks(filepath.Clean(d))
	if err != nil {
		return "", fmt.Errorf("%q: %v", d, err)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("%q: %v", d, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%q is not a directory", d)
	}
	return p, nil
}

// Mask hides a secret: its length and nothing else.
func Mask(s string) string { return fmt.Sprintf("<masked, %d chars>", len(s)) }

// Print writes the effective configuration as YAML, tokens masked. The
// output is a valid configuration file (apart from the masked tokens).
func (c *Config) Print(w io.Writer) error {
	toks := make([]string, len(c.Tokens))
	for i, t := range c.Tokens {
		toks[i] = Mask(t)
	}
	retentionBytes := "0"
	if c.RetentionBytes > 0 {
		retentionBytes = FormatSize(c.RetentionBytes)
	}
	out := struct {
		Listen         string   `yaml:"listen"`
		Tokens         []string `yaml:"tokens"`
		DataRoots      []string `yaml:"data_roots"`
		Store          string   `yaml:"store"`
		ShmDir         string   `yaml:"shm_dir"`
		Workers        int      `yaml:"workers"`
		Threads        int      `yaml:"threads"`
		MemoryBudget   string   `yaml:"memory_budget"`
		MetricsListen  string   `yaml:"metrics_listen"`
		MaxMessageSize string   `yaml:"max_message_size"`
		MaxUploadSize  string   `yaml:"max_upload_size"`
		DrainTimeout   string   `yaml:"drain_timeout"`
		StoreSync      bool     `yaml:"store_sync"`
		LogLevel       string   `yaml:"log_level"`
		LogFormat      string   `yaml:"log_format"`
		RetentionAge   string   `yaml:"retention_age"`
		RetentionJobs  int      `yaml:"retention_jobs"`
		RetentionBytes string   `yaml:"retention_bytes"`
		SessionIdle    string   `yaml:"session_idle_timeout"`
		Python         string   `yaml:"python"`
	}{c.Listen.String(), toks, c.DataRoots, c.Store, c.ShmDir, c.Workers, c.Threads,
		FormatSize(c.MemoryBudget), c.MetricsListen, FormatSize(c.MaxMessageBytes), FormatSize(c.MaxUploadBytes),
		c.DrainTimeout.String(), c.StoreSync, c.LogLevel, c.LogFormat,
		c.RetentionAge.String(), c.RetentionJobs, retentionBytes, c.SessionIdleTimeout.String(), c.Python}
	if c.File != "" {
		if _, err := fmt.Fprintf(w, "# from defaults, %s, NPSFUSE_* and flags\n", c.File); err != nil {
			return err
		}
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(out); err != nil {
		return err
	}
	return enc.Close()
}
