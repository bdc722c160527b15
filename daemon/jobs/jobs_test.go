package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// fixture is a runner over a temporary data root, store and shm folder.
type fixture struct {
	root  string
	env   *Env
	st    *store.Store
	r     *Runner
	store string
}

func newFixture(t *testing.T, workers int) *fixture {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	shm := filepath.Join(base, "shm")
	for _, d := range []string{root, shm} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	roots, err := config.NewRoots(root, shm)
	if err != nil {
		t.Fatal(err)
	}
	rootR, _ := filepath.EvalSymlinks(root)
	shmR, _ := filepath.EvalSymlinks(shm)
	f := &fixture{root: rootR, store: filepath.Join(base, "state", "jobs.db")}
	f.env = &Env{Roots: roots, Uploads: filepath.Join(base, "state", "uploads"), Results: filepath.Join(base, "state", "results"),
		ShmDir: shmR, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := f.env.Prepare(); err != nil {
		t.Fatal(err)
	}
	f.start(t, workers)
	return f
}

// start opens the store and starts a runner (again, after stop: a restart).
func (f *fixture) start(t *testing.T, workers int) {
	t.Helper()
	st, err := store.Open(f.store, false)
	if err != nil {
		t.Fatal(err)
	}
	f.st = st
	f.r = NewRunner(f.env, st, NewBudget(1<<30), workers)
	if err := f.r.Recover(); err != nil {
		t.Fatal(err)
	}
	f.r.Start()
	t.Cleanup(func() { f.stop() })
}

// stop drains and closes (idempotent).
func (f *fixture) stop() {
	if f.st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	f.r.Drain(ctx)
	cancel()
	f.st.Close()
	f.st = nil
}

// crash closes the store without draining (as kill -9 would leave it).
func (f *fixture) crash() {
	f.r.mu.Lock()
	f.r.draining = true // stop the workers from taking more work
	f.r.cond.Broadcast()
	f.r.mu.Unlock()
	f.st.Close()
	f.st = nil
}

func (f *fixture) wait(t *testing.T, id uint64) *Status {
	t.Helper()
	var last *Status
	err := f.r.Watch(context.Background(), id, 30*time.Second, time.Millisecond, true, func(s *Status) error { last = s; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if !last.State.Final() && !last.Ready {
		t.Fatalf("job %d still %s", id, last.State)
	}
	return last
}

// family writes a base and n fine-tunes as Arrow tensor files.
func (f *fixture) family(t *testing.T, n int, seed int64) (paths []string, data [][][]float32, metas []tensors.Meta) {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	metas = []tensors.Meta{
		{Name: "embed.weight", DType: safetensors.F32, Shape: []int64{40, 30}},
		{Name: "layer.bias", DType: safetensors.F32, Shape: []int64{30}},
		{Name: "head.weight", DType: safetensors.F32, Shape: []int64{3, 30}},
	}
	base := make([][]float32, len(metas))
	for i, m := range metas {
		base[i] = make([]float32, m.Numel())
		for j := range base[i] {
			base[i][j] = float32(rng.NormFloat64())
		}
	}
	for k := 0; k <= n; k++ {
		sd := base
		if k > 0 {
			sd = make([][]float32, len(metas))
			for i := range metas {
				sd[i] = make([]float32, len(base[i]))
				for j := range sd[i] {
					sd[i][j] = base[i][j] + 0.05*float32(rng.NormFloat64())
				}
			}
		}
		p := filepath.Join(f.root, fmt.Sprintf("m%d.arrow", k))
		if _, err := tensors.WriteIPC(p, metas, func(i int, dst []byte) error {
			copy(dst, unsafe.Slice((*byte)(unsafe.Pointer(&sd[i][0])), 4*len(sd[i])))
			return nil
		}, false); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		data = append(data, sd)
	}
	return paths, data, metas
}

func f32(b []byte) []float32 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}

func submit(t *testing.T, f *fixture, typ string, spec any) *store.Job {
	t.Helper()
	raw, _ := json.Marshal(spec)
	j, _, err := f.r.Submit(typ, raw, "")
	if err != nil {
		t.Fatalf("submit %s: %v", typ, err)
	}
	return j
}

func resultTensors(t *testing.T, st *Status) *tensors.IPCSource {
	t.Helper()
	var res struct {
		Path string `json:"path"`
	}
	if err := json.Unmarshal(st.Result, &res); err != nil {
		t.Fatal(err)
	}
	src, err := tensors.OpenIPC(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// TestMergeMatchesEngine: a merge job over tensor files gives, bit for bit,
// what gocore/merge computes on the same data in memory.
func TestMergeMatchesEngine(t *testing.T) {
	f := newFixture(t, 2)
	paths, data, metas := f.family(t, 3, 1)
	for _, method := range []string{"ties", "task_arithmetic", "dare_linear"} {
		cfg := map[string]any{"merge_method": method, "base_model": paths[0],
			"models":     []any{map[string]any{"model": paths[1]}, map[string]any{"model": paths[2], "parameters": map[string]any{"weight": 0.5}}, map[string]any{"model": paths[3]}},
			"parameters": map[string]any{"density": 0.3}, "seed": 7}
		if method == "task_arithmetic" { // it reads no density, and refuses one
			cfg["parameters"] = map[string]any{}
		}
		j := submit(t, f, "merge", map[string]any{"config": cfg, "result": map[string]any{"shm": true}})
		st := f.wait(t, j.ID)
		if st.State != store.Done {
			t.Fatalf("%s: %s: %s", method, st.State, st.Error)
		}
		got := resultTensors(t, st)
		// The same merge in memory.
		ts := make([]merge.Tensor, len(metas))
		outs := make([][]float32, len(metas))
		for i, m := range metas {
			outs[i] = make([]float32, m.Numel())
			ts[i] = merge.Tensor{Name: m.Name, Shape: m.IntShape(), Base: tensor.FromF32(data[0][i]), Out: tensor.FromF32(outs[i]),
				Models: []tensor.Vec{tensor.FromF32(data[1][i]), tensor.FromF32(data[2][i]), tensor.FromF32(data[3][i])}}
		}
		p := merge.Params{Weights: []float32{1, 0.5, 1}, Density: 0.3, Lambda: 1, Seed: 7, Normalize: method == "ties",
			Rescale: method == "dare_linear"} // mergekit's defaults (the spec table's)
		if err := merge.Run(method, p, ts); err != nil {
			t.Fatal(err)
		}
		for i, m := range metas {
			b, err := got.Bytes(m.Name)
			if err != nil {
				t.Fatal(err)
			}
			g := f32(b)
			for k := range g {
				if math.Float32bits(g[k]) != math.Float32bits(outs[i][k]) {
					t.Fatalf("%s: %s[%d] = %v, engine %v", method, m.Name, k, g[k], outs[i][k])
				}
			}
		}
	}
}

func TestMergeOutDirFromCheckpoints(t *testing.T) {
	f := newFixture(t, 1)
	_, data, metas := f.family(t, 2, 2)
	var dirs []string
	for k, sd := range data {
		dir := filepath.Join(f.root, fmt.Sprint("ckpt", k))
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
		dirs = append(dirs, dir)
	}
	out := filepath.Join(f.root, "merged")
	cfg := map[string]any{"merge_method": "task_arithmetic", "base_model": dirs[0],
		"models": []any{map[string]any{"model": dirs[1]}, map[string]any{"model": dirs[2]}}, "parameters": map[string]any{"lambda": 0.5}}
	j := submit(t, f, "merge", map[string]any{"config": cfg, "out_dir": out})
	st := f.wait(t, j.ID)
	if st.State != store.Done {
		t.Fatalf("%s: %s", st.State, st.Error)
	}
	sf, err := safetensors.Open(filepath.Join(out, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	b, _ := sf.Bytes("layer.bias")
	g := f32(b)
	for k := range g {
		want := data[0][1][k] + 0.5*((data[1][1][k]-data[0][1][k])+(data[2][1][k]-data[0][1][k]))
		if math.Abs(float64(g[k]-want)) > 1e-6 {
			t.Fatalf("layer.bias[%d] = %v, want %v", k, g[k], want)
		}
	}
	if st.Progress.Done != 3 || st.Progress.Total != 3 {
		t.Errorf("progress %+v, want 3/3 tensors", st.Progress)
	}
}

func TestSubmitRefusals(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 1, 3)
	outside := filepath.Join(t.TempDir(), "x.arrow")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := func(base string) map[string]any {
		return map[string]any{"merge_method": "ties", "base_model": base, "models": []any{map[string]any{"model": paths[1]}}}
	}
	cases := []struct {
		typ  string
		spec any
		want error
	}{
		{"merge", map[string]any{"config": cfg(outside)}, config.ErrOutsideRoots},
		{"merge", map[string]any{"config": cfg(paths[0]), "out_dir": "/etc/npsfuse-out"}, config.ErrOutsideRoots},
		{"merge", map[string]any{"config": cfg("relative/path")}, ErrInvalid},
		{"merge", map[string]any{"config": cfg("upload:nope")}, ErrNoUpload},
		{"merge", map[string]any{"config": cfg(paths[0]), "bogus": 1}, ErrInvalid},
		{"merge", map[string]any{"config": cfg(paths[0]), "cleanup": []string{paths[0]}}, ErrInvalid},
		{"teleport", map[string]any{}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[1]}}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[0], paths[1]}, "strategy": "swarm"}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[0], paths[1], paths[1]}, "strategy": "best/1/bin", "merge": "ties", "base": paths[0]}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[0], paths[1]}, "base": paths[0]}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[0], paths[1]}, "merge": "fisher", "base": paths[0]}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[0], paths[1]}, "merge": "ties", "base": paths[0],
			"merge_params": map[string]any{"global": map[string]any{"density": 2}}}, ErrInvalid},
		{"evolve", map[string]any{"models": []string{paths[0], paths[1]}, "merge": "ties", "base": outside}, config.ErrOutsideRoots},
		{"nps_prune", map[string]any{"base": paths[0], "model": paths[1], "keep": 2.0}, ErrInvalid},
		{"nps_search", map[string]any{"base": paths[0], "model": paths[1], "optimizer": "sgd"}, ErrInvalid},
	}
	for _, c := range cases {
		raw, _ := json.Marshal(c.spec)
		if _, _, err := f.r.Submit(c.typ, raw, ""); !errors.Is(err, c.want) {
			t.Errorf("%s %s: %v, want %v", c.typ, raw, err, c.want)
		}
	}
	if n := len(mustList(t, f)); n != 0 {
		t.Errorf("%d jobs stored from refused submits", n)
	}
}

func mustList(t *testing.T, f *fixture) []*Status {
	t.Helper()
	l, err := f.r.List(store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestIdempotentSubmitSurvivesCleanup(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 1, 4)
	// An upload the job consumes (and deletes when it ends).
	up := f.env.ShmUploadPath("u1")
	raw, _ := os.ReadFile(paths[1])
	if err := os.WriteFile(up, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(map[string]any{"config": map[string]any{"merge_method": "task_arithmetic", "base_model": paths[0],
		"models": []any{map[string]any{"model": "upload:u1"}}}, "cleanup": []string{"upload:u1"}})
	j, existed, err := f.r.Submit("merge", spec, "key-1")
	if err != nil || existed {
		t.Fatal(err, existed)
	}
	if st := f.wait(t, j.ID); st.State != store.Done {
		t.Fatalf("%s %s", st.State, st.Error)
	}
	if f.env.UploadExists("u1") {
		t.Error("the upload was not cleaned up")
	}
	// The retried submit finds the job although its upload is gone.
	j2, existed, err := f.r.Submit("merge", spec, "key-1")
	if err != nil || !existed || j2.ID != j.ID {
		t.Fatalf("retry: %v existed=%v id=%d", err, existed, j2.ID)
	}
	if len(mustList(t, f)) != 1 {
		t.Error("the retry created a job")
	}
}

func TestCancelQueued(t *testing.T) {
	f := newFixture(t, 0) // no worker takes anything
	paths, _, _ := f.family(t, 1, 5)
	j := submit(t, f, "merge", map[string]any{"config": map[string]any{"merge_method": "ties", "base_model": paths[0], "models": []any{map[string]any{"model": paths[1]}}}})
	st, err := f.r.Cancel(j.ID)
	if err != nil || st.State != store.Cancelled {
		t.Fatalf("cancel: %+v %v", st, err)
	}
	if f.r.QueueDepth() != 0 {
		t.Errorf("queue depth %d after cancel", f.r.QueueDepth())
	}
	if st, _ := f.r.Cancel(j.ID); st.State != store.Cancelled {
		t.Errorf("second cancel changed the state to %s", st.State)
	}
}

// TestRecovery: a job left running by a crashed process resumes; one
// interrupted MaxAttempts times fails with the reason.
func TestRecovery(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 1, 6)
	spec, _ := json.Marshal(map[string]any{"config": map[string]any{"merge_method": "ties", "base_model": paths[0], "models": []any{map[string]any{"model": paths[1]}}}})
	f.crash()
	st, err := store.Open(f.store, false)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, attempts := range []int{1, MaxAttempts - 1, MaxAttempts} {
		j, _, err := st.Submit(&store.Job{Type: "merge", Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Update(j.ID, func(j *store.Job) error { j.State, j.Attempts = store.Running, attempts; return nil }); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	queued, _, _ := st.Submit(&store.Job{Type: "merge", Spec: spec})
	st.Close()
	f.start(t, 1)
	for i, id := range append(ids, queued.ID) {
		s := f.wait(t, id)
		want := store.Done
		if i == 2 {
			want = store.Failed
		}
		if s.State != want {
			t.Errorf("job %d: %s (%s), want %s", id, s.State, s.Error, want)
		}
		if i < 2 && (len(s.Notes) == 0 || !strings.Contains(s.Notes[0], "resumed")) {
			t.Errorf("job %d: notes %v, want a resume note", id, s.Notes)
		}
		if i == 2 && !strings.Contains(s.Error, "interrupted") {
			t.Errorf("job %d: error %q", id, s.Error)
		}
	}
}

// TestSearchSessionResumes: a crash between ask and tell loses nothing —
// the restarted session asks the same candidates, and the whole run
// equals an uninterrupted one.
func TestSearchSessionResumes(t *testing.T) {
	run := func(crashAt int) ([][]float64, []float64) {
		f := newFixture(t, 1)
		paths, _, _ := f.family(t, 1, 8)
		j := submit(t, f, "nps_search", map[string]any{"base": paths[0], "model": paths[1], "subspaces": 3, "seed": 11, "popsize": 4})
		var asked [][]float64
		for g := 0; g < 4; g++ {
			sess, err := f.r.WaitSession(context.Background(), j.ID, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			res, err := sess.Ask()
			if err != nil {
				t.Fatal(err)
			}
			cands := res.(map[string]any)["candidates"].([][]float64)
			if g == crashAt {
				f.crash()
				f.start(t, 1)
				sess, err = f.r.WaitSession(context.Background(), j.ID, 30*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				res2, err := sess.Ask()
				if err != nil {
					t.Fatal(err)
				}
				again := res2.(map[string]any)["candidates"].([][]float64)
				if fmt.Sprint(again) != fmt.Sprint(cands) {
					t.Fatalf("after the crash the session asks %v, before it asked %v", again, cands)
				}
			}
			asked = append(asked, cands...)
			scores := make([]float64, len(cands))
			for i, x := range cands {
				for _, v := range x {
					scores[i] -= (v - 1.3) * (v - 1.3)
				}
			}
			if _, err := sess.Tell(scores); err != nil {
				t.Fatal(err)
			}
		}
		sess, _ := f.r.Session(j.ID)
		b, _ := sess.Best()
		return asked, b.(map[string]any)["x"].([]float64)
	}
	a1, b1 := run(-1)
	a2, b2 := run(2)
	if fmt.Sprint(a1) != fmt.Sprint(a2) || fmt.Sprint(b1) != fmt.Sprint(b2) {
		t.Errorf("interrupted run differs from the uninterrupted one")
	}
}

func TestPruneAndCompress(t *testing.T) {
	f := newFixture(t, 1)
	paths, data, metas := f.family(t, 2, 9)
	j := submit(t, f, "nps_prune", map[string]any{"base": paths[0], "model": paths[1], "subspaces": 4, "keep": 0.25, "output": "task_vector", "result": map[string]any{"shm": true}})
	st := f.wait(t, j.ID)
	if st.State != store.Done {
		t.Fatalf("%s %s", st.State, st.Error)
	}
	src := resultTensors(t, st)
	var kept, total int
	for _, m := range metas {
		b, _ := src.Bytes(m.Name)
		for _, v := range f32(b) {
			if v != 0 {
				kept++
			}
			total++
		}
	}
	// keep = 0.25 of 1320 entries, globally.
	if kept != total/4 {
		t.Errorf("kept %d of %d entries, want %d", kept, total, total/4)
	}
	j = submit(t, f, "compress", map[string]any{"base": paths[0], "models": []string{paths[1], paths[2]}, "subspaces": 4, "keep": 0.05})
	st = f.wait(t, j.ID)
	if st.State != store.Done {
		t.Fatalf("%s %s", st.State, st.Error)
	}
	var res struct {
		Models []struct {
			Bits float64 `json:"bits_per_param"`
		} `json:"models"`
	}
	_ = json.Unmarshal(st.Result, &res)
	// 1 mask bit per entry plus 32 bits for each of the ⌊0.05·1320⌋ = 66 kept.
	want := (1320.0 + 66*32) / 1320
	if len(res.Models) != 2 || math.Abs(res.Models[0].Bits-want) > 1e-9 {
		t.Errorf("bits per parameter %+v, want %v", res.Models, want)
	}
	src = resultTensors(t, st)
	mask, _ := src.Bytes("1:layer.bias:mask")
	vals, _ := src.Bytes("1:layer.bias:values")
	ones := 0
	for _, b := range mask {
		for ; b != 0; b &= b - 1 {
			ones++
		}
	}
	if ones != len(vals)/4 || len(mask) != 4 {
		t.Errorf("mask has %d bits set for %d values (%d mask bytes)", ones, len(vals)/4, len(mask))
	}
	_ = data
}

func TestPackMask(t *testing.T) {
	negZero := float32(math.Copysign(0, -1))
	mask, vals := PackMask([]float32{0, 2, 0, 0, 0, 0, 0, negZero, -1, 3})
	if len(mask) != 2 || mask[0] != 0b01000001 || mask[1] != 0b11000000 || fmt.Sprint(vals) != "[2 -0 -1 3]" {
		t.Errorf("PackMask = %08b %v", mask, vals)
	}
}

func TestBudget(t *testing.T) {
	b := NewBudget(100)
	if _, err := b.Reserve(context.Background(), 101, "x"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over budget: %v", err)
	}
	r1, err := b.Reserve(context.Background(), 60, "a")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		r2, err := b.Reserve(context.Background(), 60, "b")
		if err == nil {
			r2()
		}
		got <- err
	}()
	select {
	case <-got:
		t.Fatal("second reservation did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	r1()
	r1() // a second release is a no-op
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b.Used() != 0 {
		t.Errorf("used %d after releases", b.Used())
	}
	ctx, cancel := context.WithCancel(context.Background())
	r3, _ := b.Reserve(context.Background(), 100, "c")
	cancel()
	if _, err := b.Reserve(ctx, 1, "d"); err == nil {
		t.Error("reservation on a cancelled context succeeded")
	}
	r3()
}

// evolveRun drives an evolve session (scores: closeness of the candidate's
// layer.bias to 0.3), crashing once before telling ask number crashAt; it
// returns the asked candidates, the scores told and the final fitness.
// merger names the merge method of Evolver "with merger" ("": none).
func evolveRun(t *testing.T, strategy, merger string, crashAt int) (asked [][]float64, fit []any) {
	t.Helper()
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 3, 21)
	spec := map[string]any{"models": paths[1:], "strategy": strategy, "generations": 3, "seed": 5,
		"schedule": map[string]any{"kind": "constant", "f": 0.5, "cr": 0.5}, "exclude": []string{"head.*"}}
	if merger != "" {
		spec["merge"], spec["base"] = merger, paths[0]
		spec["merge_params"] = map[string]any{"global": map[string]any{"lambda": 0.5}}
	}
	j := submit(t, f, "evolve", spec)
	score := func(sess Session, c []float64) float64 {
		set, err := sess.Candidate(c)
		if err != nil {
			t.Fatal(err)
		}
		defer set.Done()
		s := 0.0
		for i, m := range set.Metas {
			if m.Name != "layer.bias" {
				continue
			}
			b := make([]byte, m.Bytes())
			if err := set.Fill(i, b); err != nil {
				t.Fatal(err)
			}
			for _, v := range f32(b) {
				s -= (float64(v) - 0.3) * (float64(v) - 0.3)
			}
		}
		return s
	}
	for k := 0; ; k++ {
		sess, err := f.r.WaitSession(context.Background(), j.ID, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		res, err := sess.Ask()
		if err != nil {
			t.Fatal(err)
		}
		m := res.(map[string]any)
		if m["done"].(bool) {
			b, _ := sess.Best()
			return asked, []any{b.(map[string]any)["fitness"], b.(map[string]any)["individual"]}
		}
		cands := m["candidates"].([][]float64)
		if k == crashAt {
			f.crash()
			f.start(t, 1)
			if sess, err = f.r.WaitSession(context.Background(), j.ID, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			again, _ := sess.Ask()
			if fmt.Sprint(again.(map[string]any)["candidates"]) != fmt.Sprint(cands) {
				t.Fatalf("after the crash: %v, before: %v", again, cands)
			}
		}
		asked = append(asked, cands...)
		scores := make([]float64, len(cands))
		for i, c := range cands {
			scores[i] = score(sess, c)
		}
		if _, err := sess.Tell(scores); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEvolveSession(t *testing.T) {
	for _, c := range []struct {
		strategy, merger string
		asked            int
	}{
		// The initial evaluation (3 individuals, or 1 merge of them), then 3
		// generations of 3 trials (Evolver asks them one at a time, DE all
		// at once).
		{"evolver", "", 3 + 9},
		{"best/1/bin", "", 3 + 9},
		{"evolver", "task_arithmetic", 1 + 9},
	} {
		asked, end := evolveRun(t, c.strategy, c.merger, -1)
		if len(asked) != c.asked {
			t.Errorf("%s %s: %d candidates asked, want %d", c.strategy, c.merger, len(asked), c.asked)
		}
		asked2, end2 := evolveRun(t, c.strategy, c.merger, 5)
		if fmt.Sprint(asked) != fmt.Sprint(asked2) || fmt.Sprint(end) != fmt.Sprint(end2) {
			t.Errorf("%s %s: the run interrupted by a crash differs:\n%v %v\n%v %v", c.strategy, c.merger, asked, end, asked2, end2)
		}
	}
}

// TestEvolveMerger checks the merger mode's candidates: the initial one and
// the result are task_arithmetic of the base and the population, a trial's
// is that with the trial in place of its parent.
func TestEvolveMerger(t *testing.T) {
	f := newFixture(t, 1)
	paths, data, metas := f.family(t, 2, 23)
	j := submit(t, f, "evolve", map[string]any{"models": paths[1:], "generations": 1, "seed": 2, "merge": "task_arithmetic",
		"base": paths[0], "merge_params": map[string]any{"global": map[string]any{"lambda": 0.5}},
		"schedule": map[string]any{"kind": "constant", "f": 1, "cr": 1}})
	sess, err := f.r.WaitSession(context.Background(), j.ID, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// θ₀ + 0.5·Σ(θ_t − θ₀) over tensor k, with individual `in` replaced by `by`.
	want := func(k, in, by int) []float32 {
		out := make([]float32, len(data[0][k]))
		for e := range out {
			s := float32(0)
			for m := 1; m < len(data); m++ {
				if m-1 == in {
					s += data[by+1][k][e] - data[0][k][e]
				} else {
					s += data[m][k][e] - data[0][k][e]
				}
			}
			out[e] = data[0][k][e] + 0.5*s
		}
		return out
	}
	check := func(c []float64, in, by int) {
		t.Helper()
		set, err := sess.Candidate(c)
		if err != nil {
			t.Fatal(err)
		}
		defer set.Done()
		for k, m := range set.Metas {
			b := make([]byte, m.Bytes())
			if err := set.Fill(k, b); err != nil {
				t.Fatal(err)
			}
			w := want(slices.IndexFunc(metas, func(x tensors.Meta) bool { return x.Name == m.Name }), in, by)
			for e, v := range f32(b) {
				if math.Abs(float64(v-w[e])) > 1e-5 {
					t.Fatalf("candidate %v, %s[%d] = %v, want %v", c, m.Name, e, v, w[e])
				}
			}
		}
	}
	res, _ := sess.Ask()
	if c := res.(map[string]any)["candidates"].([][]float64); fmt.Sprint(c) != "[[-1 -1]]" {
		t.Fatalf("the first candidate is %v, want the merge [[-1 -1]]", c)
	}
	check([]float64{-1, -1}, -1, 0)
	if _, err := sess.Tell([]float64{1}); err != nil {
		t.Fatal(err)
	}
	// F = 1, CR = 1: the offspring of i is its reference, the other one.
	res, _ = sess.Ask()
	c := res.(map[string]any)["candidates"].([][]float64)[0]
	i := int(c[1])
	check(c, i, 1-i)
	bst, err := sess.Tell([]float64{2})
	if err != nil {
		t.Fatal(err)
	}
	if b := bst.(map[string]any); fmt.Sprint(b["x"]) != "[-1 -1]" || float64(b["f"].(search.JSONFloat)) != 2 {
		t.Fatalf("best after an accepted trial: %v", b)
	}
	// Individual i is now a copy of the other one.
	check([]float64{-1, -1}, i, 1-i)
}

// TestEvolveSelection checks the selection rule by hand: an offspring that
// scores higher replaces its parent, one that scores lower does not.
func TestEvolveSelection(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 2, 22)
	j := submit(t, f, "evolve", map[string]any{"models": paths[1:], "generations": 1, "seed": 1,
		"schedule": map[string]any{"kind": "constant", "f": 1, "cr": 1}})
	sess, err := f.r.WaitSession(context.Background(), j.ID, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Ask(); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Tell([]float64{1, 2}); err != nil {
		t.Fatal(err)
	}
	// F = 1, CR = 1: Evolver's v = x_i + 1·(x_ref − x_i) = x_ref, taken
	// whole; with two individuals the reference is the other one.
	bias := func(c []float64) []float32 {
		set, err := sess.Candidate(c)
		if err != nil {
			t.Fatal(err)
		}
		defer set.Done()
		b := make([]byte, set.Metas[1].Bytes())
		if err := set.Fill(1, b); err != nil {
			t.Fatal(err)
		}
		return f32(b)
	}
	for round := 0; round < 2; round++ {
		res, _ := sess.Ask()
		c := res.(map[string]any)["candidates"].([][]float64)[0]
		i := int(c[1])
		ref := bias([]float64{-2, float64(1 - i)})
		if got := bias(c); fmt.Sprint(got) != fmt.Sprint(ref) {
			t.Fatalf("offspring of %d is not its reference: %v vs %v", i, got[:3], ref[:3])
		}
		score := 0.0 // worse than both
		if round == 0 {
			score = 10 // better: replaces individual i
		}
		bst, err := sess.Tell([]float64{score})
		if err != nil {
			t.Fatal(err)
		}
		fit := bst.(map[string]any)["fitness"].([]search.JSONFloat)
		if round == 0 && float64(fit[i]) != 10 {
			t.Errorf("a better offspring did not replace its parent: %v", fit)
		}
		if round == 1 && float64(fit[i]) == 0 {
			t.Errorf("a worse offspring replaced its parent: %v", fit)
		}
		if round == 0 && fmt.Sprint(bias([]float64{-2, float64(i)})) != fmt.Sprint(ref) {
			t.Errorf("individual %d was not replaced by its offspring", i)
		}
	}
}

// TestWaitSessionEnds covers WaitSession's other ends than a ready
// session: a session whose setup failed (its error), a job that is no
// session, and the timeout while a session is still queued.
func TestWaitSessionEnds(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, metas := f.family(t, 1, 5)
	partial := filepath.Join(f.root, "partial.arrow")
	if _, err := tensors.WriteIPC(partial, metas[1:2], func(int, []byte) error { return nil }, false); err != nil {
		t.Fatal(err)
	}
	j := submit(t, f, "nps_search", map[string]any{"base": paths[0], "model": partial})
	_, err := f.r.WaitSession(context.Background(), j.ID, 30*time.Second)
	if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), fmt.Sprintf("session %d is failed: ", j.ID)) {
		t.Fatalf("failed setup: %v", err)
	}
	m := submit(t, f, "merge", map[string]any{"config": map[string]any{"merge_method": "linear", "base_model": paths[0],
		"models": []any{map[string]any{"model": paths[1]}}}})
	if _, err := f.r.WaitSession(context.Background(), m.ID, 30*time.Second); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "not an interactive session") {
		t.Fatalf("merge job: %v", err)
	}
	if st := f.wait(t, m.ID); st.State != store.Done {
		t.Fatalf("merge job %s", st.State)
	}

	g := newFixture(t, 0) // no worker: the session stays queued
	paths, _, _ = g.family(t, 1, 6)
	q := submit(t, g, "nps_search", map[string]any{"base": paths[0], "model": paths[1]})
	if _, err := g.r.WaitSession(context.Background(), q.ID, 20*time.Millisecond); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "not ready yet (queued)") {
		t.Fatalf("queued session: %v", err)
	}
}
