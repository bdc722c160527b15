package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
)

// checkpoints writes the fixture family's models as checkpoint folders
// (model.safetensors, config.json) in the root and returns them.
func (f *fixture) checkpoints(t *testing.T, n int, seed int64) []string {
	t.Helper()
	_, data, metas := f.family(t, n, seed)
	var dirs []string
	for k, sd := range data {
		dir := filepath.Join(f.root, fmt.Sprintf("ckpt%d-%d", seed, k))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		ts := map[string]safetensors.Tensor{}
		for i, m := range metas {
			ts[m.Name] = safetensors.Tensor{DType: safetensors.F32, Shape: m.Shape, Data: unsafe.Slice((*byte)(unsafe.Pointer(&sd[i][0])), 4*len(sd[i]))}
		}
		if err := safetensors.Save(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type": "tiny"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	return dirs
}

func linearConfig(dirs []string) map[string]any {
	return map[string]any{"merge_method": "task_arithmetic", "base_model": dirs[0],
		"models": []any{map[string]any{"model": dirs[1]}}, "parameters": map[string]any{"lambda": 0.5}}
}

// keyOfPath is the identity of an existing file.
func keyOfPath(t *testing.T, p string) fileKey {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := keyOf(fi)
	if !ok {
		t.Skip("no inode numbers on this platform")
	}
	return k
}

// A stream merge interrupted by a crash is retried; the retry replaces
// out_dir only when the interrupted attempt committed it (its inode), and
// removes only the temporary folders the attempt recorded. A folder the
// user made (non-empty, no force) is never replaced (issue 16, High 1).
func TestRetryReplacesOnlyItsOwnOutput(t *testing.T) {
	userFolder := func(t *testing.T, out string) {
		if err := os.MkdirAll(out, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, "precious.txt"), []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmpOf := func(out string) string {
		return filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".npsfuse-tmp-123")
	}
	markOf := func(tmp string, k fileKey) json.RawMessage {
		raw, _ := json.Marshal(outputMark{Tmp: tmp, Key: k})
		return raw
	}
	cases := []struct {
		name      string
		force     bool
		crash     func(t *testing.T, out string) json.RawMessage // makes what the crash left; returns the checkpoint
		wantState store.State
	}{
		{"user folder, attempt marked nothing", false, func(t *testing.T, out string) json.RawMessage {
			userFolder(t, out)
			return nil
		}, store.Failed},
		{"user folder, attempt crashed before its commit", false, func(t *testing.T, out string) json.RawMessage {
			userFolder(t, out)
			tmp := tmpOf(out)
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			return markOf(tmp, keyOfPath(t, tmp))
		}, store.Failed},
		{"user folder with force", true, func(t *testing.T, out string) json.RawMessage {
			userFolder(t, out)
			return nil
		}, store.Done},
		{"out committed by the attempt", false, func(t *testing.T, out string) json.RawMessage {
			tmp := tmpOf(out)
			if err := os.MkdirAll(out, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(out, "model.safetensors"), []byte("partial"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(tmp+".old", 0o755); err != nil { // the empty folder the commit replaced
				t.Fatal(err)
			}
			return markOf(tmp, keyOfPath(t, out))
		}, store.Done},
		{"attempt crashed before its commit", false, func(t *testing.T, out string) json.RawMessage {
			tmp := tmpOf(out)
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			return markOf(tmp, keyOfPath(t, tmp))
		}, store.Done},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, 1)
			dirs := f.checkpoints(t, 1, 21)
			out := filepath.Join(f.root, "out")
			spec := map[string]any{"config": linearConfig(dirs), "out_dir": out}
			if c.force {
				spec["force"] = true
			}
			raw, _ := json.Marshal(spec)
			if _, err := kinds["merge"].check(f.env, raw); err != nil {
				t.Fatal(err)
			}
			f.crash()
			st, err := store.Open(f.store, false)
			if err != nil {
				t.Fatal(err)
			}
			j, _, err := st.Submit(&store.Job{Type: "merge", Spec: raw})
			if err != nil {
				t.Fatal(err)
			}
			ckpt := c.crash(t, out)
			if _, err := st.Update(j.ID, func(j *store.Job) error {
				j.State, j.Attempts, j.Checkpoint = store.Running, 1, ckpt
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			st.Close()
			f.start(t, 1) // the restart: the job resumes as attempt 2
			s := f.wait(t, j.ID)
			if s.State != c.wantState {
				t.Fatalf("state %s (%s), want %s", s.State, s.Error, c.wantState)
			}
			if c.wantState == store.Failed {
				if precious, err := os.ReadFile(filepath.Join(out, "precious.txt")); string(precious) != "mine" {
					t.Errorf("the user's folder was touched: precious.txt %q, %v", precious, err)
				}
				if !strings.Contains(s.Error, "not empty") {
					t.Errorf("error %q, want one saying out_dir is not empty", s.Error)
				}
			} else if sf, err := safetensors.Open(filepath.Join(out, "model.safetensors")); err != nil {
				t.Errorf("no merged output: %v", err)
			} else {
				sf.Close()
			}
			if left, _ := filepath.Glob(filepath.Join(f.root, ".out.npsfuse-tmp-*")); len(left) > 0 {
				t.Errorf("temporary folders left: %q", left)
			}
		})
	}
}

// A foreign temporary folder beside out_dir (another process's merge into
// the same name) is not removed by a retry that did not create it.
func TestRetryKeepsForeignTempFolders(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(root, "out")
	foreign := filepath.Join(root, ".out.npsfuse-tmp-999")
	mine := filepath.Join(root, ".out.npsfuse-tmp-111")
	for _, d := range []string{foreign, mine} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	raw, _ := json.Marshal(outputMark{Tmp: mine, Key: keyOfPath(t, mine)})
	if recoverOutput(log, out, raw) != nil {
		t.Error("an absent out_dir reported as the job's own")
	}
	if _, err := os.Stat(mine); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the attempt's own temporary folder is still there: %v", err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("a foreign temporary folder was removed: %v", err)
	}
	// A checkpoint naming a folder that is not out's temporary folder is ignored.
	victim := filepath.Join(root, "victim")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	raw, _ = json.Marshal(outputMark{Tmp: victim})
	recoverOutput(log, out, raw)
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("a folder outside the pattern was removed: %v", err)
	}
}

// hardenedEnv is an Env whose job store and own folders lie inside its
// data root, with a second root nested in the first.
func hardenedEnv(t *testing.T) (*Env, string) {
	t.Helper()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "root")
	shm := filepath.Join(base, "shm")
	for _, d := range []string{filepath.Join(root, "nested"), shm, filepath.Join(root, "state")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	roots, err := config.NewRoots(root, filepath.Join(root, "nested"), shm)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Roots: roots, Uploads: filepath.Join(root, "state", "uploads"), Results: filepath.Join(root, "state", "results"),
		Store: filepath.Join(root, "state", "jobs.db"), ShmDir: shm, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := e.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.Store, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return e, root
}

// An output may not be a data root, hold one, or lie inside or above the
// daemon's own folders: force would delete it (issue 16, Medium 6).
func TestOutputPathRefusesRootsAndOwnFolders(t *testing.T) {
	e, root := hardenedEnv(t)
	refused := []string{
		root, filepath.Join(root, "nested"), filepath.Dir(root),
		e.ShmDir, filepath.Join(e.ShmDir, "uploads"), filepath.Join(e.ShmDir, "uploads", "x"), filepath.Join(e.ShmDir, "new"),
		e.Uploads, filepath.Join(e.Uploads, "x"), e.Results, e.Store, filepath.Join(root, "state"),
	}
	for _, p := range refused {
		if _, err := e.OutputPath(p, "out_dir"); err == nil {
			t.Errorf("OutputPath(%s) accepted", p)
		} else if !strings.Contains(err.Error(), p) {
			t.Errorf("OutputPath(%s): %v does not name the path", p, err)
		}
	}
	for _, p := range []string{filepath.Join(root, "out"), filepath.Join(root, "nested", "out"), filepath.Join(root, "state2")} {
		if _, err := e.OutputPath(p, "out_dir"); err != nil {
			t.Errorf("OutputPath(%s): %v", p, err)
		}
	}
}

// A merge submitted with force into a data root or the uploads folder is
// refused at submit, and nothing is deleted.
func TestForceNeverDeletesRootsOrUploads(t *testing.T) {
	f := newFixture(t, 1)
	dirs := f.checkpoints(t, 1, 22)
	pending := f.env.ShmUploadPath("pending")
	if err := os.WriteFile(pending, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{f.root, filepath.Join(f.env.ShmDir, "uploads"), f.env.ShmDir} {
		raw, _ := json.Marshal(map[string]any{"config": linearConfig(dirs), "out_dir": out, "force": true})
		if _, _, err := f.r.Submit("merge", raw, ""); !errors.Is(err, ErrInvalid) {
			t.Errorf("out_dir %s with force: %v, want ErrInvalid", out, err)
		}
	}
	if _, err := os.Stat(pending); err != nil {
		t.Errorf("the pending upload is gone: %v", err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "model.safetensors")); err != nil {
			t.Errorf("an input in the root is gone: %v", err)
		}
	}
}

// Files inside an allowed checkpoint folder that link out of the data
// roots are refused; links that stay inside (a Hugging Face cache's
// snapshots → blobs) are fine (issue 16, Medium 5).
func TestResolveRefusesLinksOutOfRoots(t *testing.T) {
	f := newFixture(t, 1)
	dirs := f.checkpoints(t, 1, 23)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.json")
	if err := os.WriteFile(secret, []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	weights, _ := os.ReadFile(filepath.Join(dirs[0], "model.safetensors"))
	if err := os.WriteFile(filepath.Join(outside, "w.safetensors"), weights, 0o600); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, links map[string]string) string {
		d := filepath.Join(f.root, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for file, target := range links {
			if err := os.Symlink(target, filepath.Join(d, file)); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	inRoot := filepath.Join(dirs[0], "model.safetensors")
	cases := []struct {
		dir  string
		want error
	}{
		{mk("weights-out", map[string]string{"model.safetensors": filepath.Join(outside, "w.safetensors")}), config.ErrOutsideRoots},
		{mk("tokenizer-out", map[string]string{"model.safetensors": inRoot, "tokenizer.json": secret}), config.ErrOutsideRoots},
		{mk("config-out", map[string]string{"model.safetensors": inRoot, "config.json": secret}), config.ErrOutsideRoots},
		{mk("cache-like", map[string]string{"model.safetensors": inRoot}), nil},
	}
	for _, c := range cases {
		_, err := f.env.Resolve(c.dir, "models[0].model")
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("Resolve(%s) = %v, want %v", c.dir, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), "models[0].model") {
			t.Errorf("error %v does not name the field", err)
		}
	}
}

// A FIFO named like a checkpoint file, a config or statistics is refused
// at submit, naming the file, instead of blocking a worker in open
// (issue 16, Medium 9).
func TestSubmitRefusesFIFOInputs(t *testing.T) {
	f := newFixture(t, 1)
	dirs := f.checkpoints(t, 1, 24)
	fifoDir := func(name string, fifo string) (string, string) {
		d := filepath.Join(f.root, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if fifo != "model.safetensors" {
			w, _ := os.ReadFile(filepath.Join(dirs[0], "model.safetensors"))
			if err := os.WriteFile(filepath.Join(d, "model.safetensors"), w, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		p := filepath.Join(d, fifo)
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
		return d, p
	}
	weights, wFifo := fifoDir("fifo-weights", "model.safetensors")
	cfgDir, cFifo := fifoDir("fifo-config", "config.json")
	_, sFifo := fifoDir("fifo-stats", "a.fisher.safetensors")
	arrow := filepath.Join(f.root, "t.arrow")
	if err := syscall.Mkfifo(arrow, 0o600); err != nil {
		t.Fatal(err)
	}
	merge := func(cfg map[string]any, out bool) map[string]any {
		s := map[string]any{"config": cfg}
		if out {
			s["out_dir"] = filepath.Join(f.root, "out")
		}
		return s
	}
	cases := []struct {
		typ  string
		spec map[string]any
		fifo string
	}{
		{"merge", merge(linearConfig([]string{weights, dirs[1]}), true), wFifo},
		{"merge", merge(linearConfig([]string{dirs[0], weights}), false), wFifo},
		{"merge", merge(linearConfig([]string{cfgDir, dirs[1]}), true), cFifo},
		{"merge", merge(map[string]any{"merge_method": "fisher", "base_model": dirs[0],
			"models": []any{map[string]any{"model": dirs[1], "parameters": map[string]any{"statistics": sFifo}}}}, true), sFifo},
		{"nps_prune", map[string]any{"base": arrow, "model": dirs[1]}, arrow},
		{"nps_search", map[string]any{"base": dirs[0], "model": weights}, wFifo},
	}
	for _, c := range cases {
		raw, _ := json.Marshal(c.spec)
		_, _, err := f.r.Submit(c.typ, raw, "")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.fifo) || !strings.Contains(err.Error(), "FIFO") {
			t.Errorf("%s %s: %v, want ErrInvalid naming the FIFO %s", c.typ, raw, err, c.fifo)
		}
	}
	// Opening one directly does not block either.
	if _, err := tensors.OpenIPC(arrow); !errors.Is(err, tensors.ErrIPC) {
		t.Errorf("OpenIPC(FIFO) = %v, want ErrIPC", err)
	}
}

// nps_search sizes are bounded before anything is allocated, and a
// value of the wrong type is described in JSON terms; errors name the
// field and the limit (issue 16, High 3 and Low 15).
func TestSearchSizesBounded(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 1, 25)
	cases := []struct {
		field string
		value any
		want  string
	}{
		{"popsize", int64(1_000_000_000_000), "popsize 1000000000000 is over the limit of 10000"},
		{"popsize", int64(1) << 62, "popsize 4611686018427387904 is over the limit of 10000"},
		{"generations", int64(1) << 40, "over the limit of 1000000"},
		{"rank", int64(1) << 62, "rank 4611686018427387904 is over the limit"},
		{"oversample", int64(1) << 62, "oversample"},
		{"power_iters", int64(1) << 40, "power_iters"},
		{"seed", -1, "seed: got number -1, want an integer in [0, 2^64)"},
		{"popsize", "ten", "popsize: got string, want an integer"},
	}
	for _, c := range cases {
		for _, optimizer := range []string{"cma", "de"} {
			raw, _ := json.Marshal(map[string]any{"base": paths[0], "model": paths[1], c.field: c.value, "optimizer": optimizer})
			_, _, err := f.r.Submit("nps_search", raw, "")
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %s=%v: %v, want ErrInvalid with %q", optimizer, c.field, c.value, err, c.want)
			}
			if err != nil && (strings.Contains(err.Error(), "Go struct") || strings.Contains(err.Error(), "uint64")) {
				t.Errorf("%s %s=%v: Go internals in %q", optimizer, c.field, c.value, err)
			}
		}
	}
}
