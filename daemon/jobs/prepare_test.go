package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// writeFile writes a file, making its folder.
func writeFile(t *testing.T, p, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakePython is a shell script standing in for the daemon's python: it
// runs body (sh) with the scratch folder as $3 and the config on stdin.
func fakePython(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "python")
	writeFile(t, p, "#!/bin/sh\n"+body+"\n")
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPlanPrepare: which configs need npsfuse._prepare, and why (the rule
// of npsfuse._prepare.needs_preparing).
func TestPlanPrepare(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	writeFile(t, filepath.Join(ckpt, "model.safetensors"), "x")
	adapter := filepath.Join(dir, "adapter")
	writeFile(t, filepath.Join(adapter, "adapter_config.json"), "{}")
	pickle := filepath.Join(dir, "pickle")
	writeFile(t, filepath.Join(pickle, "pytorch_model.bin"), "x")
	plus := filepath.Join(dir, "a+b") // a folder whose name has a +
	writeFile(t, filepath.Join(plus, "model.safetensors"), "x")
	models := func(refs ...string) []any {
		var out []any
		for _, r := range refs {
			out = append(out, map[string]any{"model": r})
		}
		return out
	}
	cases := []struct {
		name      string
		cfg       map[string]any
		why       string // in reason(); "" = nothing to prepare
		baseOnly  bool
		hub, locl int
	}{
		{"local checkpoints", map[string]any{"base_model": ckpt, "models": models(ckpt)}, "", false, 0, 0},
		{"uploads", map[string]any{"base_model": "upload:a", "models": models("upload:b")}, "", false, 0, 0},
		{"a folder named a+b", map[string]any{"base_model": ckpt, "models": models(plus)}, "", false, 0, 0},
		{"hub id", map[string]any{"base_model": ckpt, "models": models("org/name@v1")}, "Hugging Face Hub id", false, 1, 0},
		{"relative path", map[string]any{"base_model": "relative/path", "models": models(ckpt)}, "not an absolute path", false, 1, 0},
		{"model+lora", map[string]any{"base_model": ckpt, "models": models(ckpt + "+" + adapter)}, "MODEL+LORA", false, 0, 2},
		{"hub+lora", map[string]any{"base_model": ckpt, "models": models("org/base+" + adapter)}, "MODEL+LORA", false, 1, 1},
		{"adapter folder", map[string]any{"base_model": ckpt, "models": models(adapter)}, "PEFT adapter", false, 0, 1},
		{"pickle", map[string]any{"base_model": pickle, "models": models(ckpt)}, "pickle", false, 0, 1},
		{"slices source", map[string]any{"slices": []any{map[string]any{"sources": models("org/x")}}}, "slices[0].sources[0].model", false, 1, 0},
		{"tokenizer_source model", map[string]any{"base_model": ckpt, "tokenizer_source": "org/tok"}, "tokenizer_source", false, 1, 0},
		{"union", map[string]any{"base_model": ckpt, "models": models(ckpt), "tokenizer_source": "union"}, "merged tokenizer", false, 0, 0},
		{"base", map[string]any{"base_model": ckpt, "models": models(ckpt), "tokenizer_source": "base"}, "merged tokenizer", true, 0, 0},
		{"chat_template", map[string]any{"base_model": ckpt, "chat_template": "chatml"}, "chat_template needs", false, 0, 0},
		{"tokenizer block", map[string]any{"base_model": ckpt, "tokenizer": map[string]any{"source": "union"}}, "tokenizer needs", false, 0, 0},
		{"null keys", map[string]any{"base_model": ckpt, "tokenizer": nil, "chat_template": nil}, "", false, 0, 0},
		{"tokenizer.source hub id", map[string]any{"base_model": ckpt, "tokenizer": map[string]any{"source": "org/tok"}}, "tokenizer.source", false, 1, 0},
		{"tokens rule hub id", map[string]any{"base_model": ckpt, "tokenizer": map[string]any{"tokens": map[string]any{
			"<a>": map[string]any{"source": "org/a"}, "<b>": map[string]any{"source": map[string]any{"kind": "model_token", "model": "org/b+" + adapter, "token": "w"}},
			"<z>": map[string]any{"source": map[string]any{"kind": "zero"}}}}}, `tokenizer.tokens["<a>"].source`, false, 2, 1},
		// An adapter folder is base_model+ADAPTER only where a model: key
		// names it (Python: k == "model"), so a model_token's model
		// but not a rule's plain source.
		{"adapter as a model_token's model", map[string]any{"base_model": ckpt, "tokenizer": map[string]any{"tokens": map[string]any{
			"<b>": map[string]any{"source": map[string]any{"kind": "model_token", "model": adapter, "token": "w"}}}}}, "PEFT adapter", false, 0, 1},
		{"adapter as a rule's source", map[string]any{"base_model": ckpt, "tokenizer": map[string]any{"tokens": map[string]any{
			"<b>": map[string]any{"source": adapter}}}}, "tokenizer needs", false, 0, 0},
	}
	for _, c := range cases {
		p := planPrepare(c.cfg)
		if got := p.needed(); got != (c.why != "") {
			t.Errorf("%s: needed = %v, want %v", c.name, got, c.why != "")
			continue
		}
		if c.why == "" {
			continue
		}
		if !strings.Contains(p.reason(), c.why) {
			t.Errorf("%s: reason %q, want %q in it", c.name, p.reason(), c.why)
		}
		if p.baseOnly != c.baseOnly {
			t.Errorf("%s: baseOnly = %v", c.name, p.baseOnly)
		}
		var hub, locl int
		for _, r := range p.refs {
			hub, locl = hub+len(r.hub), locl+len(r.local)
		}
		if hub != c.hub || locl != c.locl {
			t.Errorf("%s: %d Hub ids and %d local paths, want %d and %d", c.name, hub, locl, c.hub, c.locl)
		}
	}
}

// TestRunPrepareAnswers: npsfuse._prepare's answers become the prepared
// config or an error of its kind; a crash is internal, with its stderr.
func TestRunPrepareAnswers(t *testing.T) {
	cases := []struct {
		name, body string
		kind       fault.Kind
		words      string
	}{
		{"config", `cat >/dev/null; echo 'noise'; echo '{"config": {"merge_method": "linear", "scratch": "'$3'"}}'`, 0, ""},
		{"invalid", `echo '{"error": {"kind": "invalid_input", "message": "models[0].model: bad"}}'; exit 1`, fault.InvalidInput, "models[0].model: bad"},
		{"not found", `echo '{"error": {"kind": "not_found", "message": "org/x is not cached"}}'; exit 1`, fault.NotFound, "org/x is not cached"},
		{"unknown kind", `echo '{"error": {"kind": "weird", "message": "m"}}'; exit 1`, fault.Internal, "m"},
		{"crash", `echo 'Traceback: boom' >&2; exit 3`, fault.Internal, "Traceback: boom"},
		{"garbage", `echo 'not json'`, fault.Internal, "no answer"},
	}
	for _, c := range cases {
		e := &Env{Python: fakePython(t, c.body)}
		scratch := t.TempDir()
		got, err := e.runPrepare(context.Background(), map[string]any{"merge_method": "linear"}, scratch, "")
		if c.words == "" {
			if err != nil || got["scratch"] != scratch {
				t.Errorf("%s: %v, %v", c.name, got, err)
			}
			continue
		}
		if err == nil || fault.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.words) {
			t.Errorf("%s: %v (kind %v), want kind %v with %q", c.name, err, fault.KindOf(err), c.kind, c.words)
		}
	}
	// Cancelled: the child is killed and the cause reported.
	e := &Env{Python: fakePython(t, `sleep 30`)}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errCancelled)
	if _, err := e.runPrepare(ctx, map[string]any{}, t.TempDir(), ""); !errors.Is(err, errCancelled) {
		t.Errorf("cancelled: %v", err)
	}
}

// prepFixture is a job fixture whose daemon has a (fake) python.
func prepFixture(t *testing.T, body string) *fixture {
	t.Helper()
	f := newFixture(t, 1)
	f.env.Python = fakePython(t, body)
	return f
}

// TestPrepareConfinement: before Python, a config's local inputs (every
// file of their folders) and the Hub cache must lie in the data roots;
// after it, every path of the prepared config in the roots or the job's
// scratch folder; and the scratch folder is gone however the job ends.
func TestPrepareConfinement(t *testing.T) {
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret", "adapter_config.json"), "{}")
	writeFile(t, filepath.Join(outside, "ckpt", "model.safetensors"), "x")
	// The fake python answers with the config in the file answer beside it.
	f := prepFixture(t, `cat >/dev/null; mkdir -p "$3/inputs"; echo '{"config": '"$(cat "$(dirname "$0")/answer")"'}'`)
	answer := func(cfg map[string]any) {
		raw, _ := json.Marshal(cfg)
		writeFile(t, filepath.Join(filepath.Dir(f.env.Python), "answer"), string(raw))
	}
	ckpt := filepath.Join(f.root, "ckpt")
	writeFile(t, filepath.Join(ckpt, "model.safetensors"), "x")
	adapter := filepath.Join(f.root, "adapter")
	writeFile(t, filepath.Join(adapter, "adapter_model.safetensors"), "x")
	if err := os.Symlink(filepath.Join(outside, "secret", "adapter_config.json"), filepath.Join(adapter, "adapter_config.json")); err != nil {
		t.Fatal(err)
	}
	lora := func(ref string) map[string]any {
		return map[string]any{"merge_method": "task_arithmetic", "base_model": ckpt, "models": []any{map[string]any{"model": ref}}}
	}
	t.Setenv("HF_HUB_CACHE", filepath.Join(outside, "hub"))
	out := filepath.Join(f.root, "out")
	for _, c := range []struct {
		name string
		cfg  map[string]any
		kind fault.Kind
		msg  string
	}{
		{"lora outside", lora(ckpt + "+" + filepath.Join(outside, "secret")), fault.Permission, "outside the data roots"},
		{"model outside", lora(filepath.Join(outside, "ckpt") + "+" + adapter), fault.Permission, "outside the data roots"},
		{"a file links out", lora(ckpt + "+" + adapter), fault.Permission, "is a link to"},
		{"relative lora", lora(ckpt + "+./adapter"), fault.InvalidInput, "absolute path"},
		{"upload lora", lora("upload:x+" + adapter), fault.InvalidInput, "an upload"},
		{"hub cache outside", lora("org/name"), fault.Permission, "Hugging Face cache " + filepath.Join(outside, "hub")},
		{"tokenizer model outside", map[string]any{"merge_method": "linear", "base_model": ckpt, "tokenizer_source": "union",
			"models": []any{map[string]any{"model": filepath.Join(outside, "ckpt")}}}, fault.Permission, "outside the data roots"},
		{"tokens rule model outside", map[string]any{"merge_method": "linear", "base_model": ckpt, "models": []any{map[string]any{"model": ckpt}},
			"tokenizer": map[string]any{"tokens": map[string]any{"<a>": map[string]any{"source": filepath.Join(outside, "ckpt")}}}},
			fault.Permission, "outside the data roots"},
		{"model_token model outside", map[string]any{"merge_method": "linear", "base_model": ckpt, "models": []any{map[string]any{"model": ckpt}},
			"tokenizer": map[string]any{"source": "union", "tokens": map[string]any{"<a>": map[string]any{
				"source": map[string]any{"kind": "model_token", "model": filepath.Join(outside, "ckpt"), "token_id": 1}}}}},
			fault.Permission, "outside the data roots"},
		{"npsfuse_vocabulary from a client", map[string]any{"merge_method": "linear", "base_model": ckpt, "npsfuse_vocabulary": map[string]any{}}, fault.InvalidInput, "internal key"},
	} {
		raw, _ := json.Marshal(map[string]any{"config": c.cfg, "out_dir": out})
		_, _, err := f.r.Submit("merge", raw, "")
		if err == nil || fault.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %v with %q", c.name, err, c.kind, c.msg)
		}
	}
	// After Python: its answer names a path outside the roots, or a
	// tokenizer folder outside the scratch folder.
	if err := os.Remove(filepath.Join(adapter, "adapter_config.json")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(adapter, "adapter_config.json"), "{}")
	in := lora(ckpt + "+" + adapter)
	for _, c := range []struct {
		name   string
		answer map[string]any
		msg    string
	}{
		{"model outside", map[string]any{"merge_method": "task_arithmetic", "base_model": ckpt,
			"models": []any{map[string]any{"model": filepath.Join(outside, "ckpt")}}}, "outside the data roots"},
		{"tokenizer_dir outside the scratch", map[string]any{"merge_method": "linear", "base_model": ckpt,
			"models": []any{map[string]any{"model": ckpt}}, "npsfuse_vocabulary": map[string]any{"tokenizer_dir": ckpt}}, "outside the job's scratch folder"},
		{"engine refuses", map[string]any{"merge_method": "nope", "base_model": ckpt,
			"models": []any{map[string]any{"model": ckpt}}}, "nope"},
	} {
		answer(c.answer)
		j := submit(t, f, "merge", map[string]any{"config": in, "out_dir": out})
		st := f.wait(t, j.ID)
		if st.State != store.Failed || !strings.Contains(st.Error, c.msg) {
			t.Errorf("%s: %s %q, want failed with %q", c.name, st.State, st.Error, c.msg)
		}
		if _, err := os.Stat(f.env.jobScratch(j.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: scratch folder left: %v", c.name, err)
		}
	}
}

// TestPrepareCancelled: a job cancelled while Python prepares its config
// stops Python and leaves no scratch folder; Python does not see the
// daemon's own settings (NPSFUSE_*).
func TestPrepareCancelled(t *testing.T) {
	t.Setenv("NPSFUSE_TOKENS", "secret-token")
	f := prepFixture(t, `env > "$(dirname "$0")/env"; touch "$3/started"; sleep 30`)
	ckpt := filepath.Join(f.root, "ckpt")
	writeFile(t, filepath.Join(ckpt, "model.safetensors"), "x")
	cfg := map[string]any{"merge_method": "linear", "base_model": ckpt, "models": []any{map[string]any{"model": ckpt}},
		"tokenizer_source": "union"}
	j := submit(t, f, "merge", map[string]any{"config": cfg, "out_dir": filepath.Join(f.root, "out")})
	started := filepath.Join(f.env.jobScratch(j.ID), "started")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Python never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := f.r.Cancel(j.ID); err != nil {
		t.Fatal(err)
	}
	if st := f.wait(t, j.ID); st.State != store.Cancelled {
		t.Fatalf("%s: %s", st.State, st.Error)
	}
	if _, err := os.Stat(f.env.jobScratch(j.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch folder left after a cancel: %v", err)
	}
	env, err := os.ReadFile(filepath.Join(filepath.Dir(f.env.Python), "env"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env), "secret-token") {
		t.Error("Python saw NPSFUSE_TOKENS")
	}
}

// TestScratchSweptAtStart: a crash leaves a job's scratch folder; the next
// start removes it (Env.Prepare, before any job runs), and nothing else.
func TestScratchSweptAtStart(t *testing.T) {
	f := newFixture(t, 1)
	f.stop()
	left := f.env.jobScratch(7)
	writeFile(t, filepath.Join(left, "inputs", "x", "model.safetensors"), "x")
	other := filepath.Join(f.env.scratchRoot(), "keep-me")
	writeFile(t, other, "x")
	if err := f.env.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch of job 7 left after a restart: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file that is no job's scratch was removed: %v", err)
	}
	// An out_dir inside the scratch folder is refused (it is the daemon's).
	roots, err := config.NewRoots(append(f.env.Roots.Dirs(), f.env.scratchRoot())...)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Roots: roots, Uploads: f.env.Uploads, Results: f.env.Results}
	if _, err := e.OutputPath(filepath.Join(f.env.scratchRoot(), "out"), "out_dir"); err == nil || !strings.Contains(err.Error(), "own folder") {
		t.Errorf("out_dir in the scratch folder: %v", err)
	}
}

// TestPrepareReservesMemory: preparing MODEL+LORA reserves three copies of
// the model's largest shard plus the adapter (a Hub id through its cached
// snapshot); a preparation larger than the whole budget fails before
// Python starts.
func TestPrepareReservesMemory(t *testing.T) {
	f := prepFixture(t, `touch "$(dirname "$0")/started"; cat >/dev/null; exit 1`)
	big := filepath.Join(f.root, "big")
	writeFile(t, filepath.Join(big, "config.json"), "{}")
	if err := os.WriteFile(filepath.Join(big, "model-00001-of-00002.safetensors"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(big, "model-00001-of-00002.safetensors"), 400<<20); err != nil { // sparse
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(big, "model-00002-of-00002.safetensors"), "x")
	adapter := filepath.Join(f.root, "adapter")
	writeFile(t, filepath.Join(adapter, "adapter_config.json"), "{}")
	writeFile(t, filepath.Join(adapter, "adapter_model.safetensors"), "0123456789")
	cache := filepath.Join(f.root, "hub")
	snap := filepath.Join(cache, "models--org--big", "snapshots", strings.Repeat("a", 40))
	writeFile(t, filepath.Join(snap, "model.safetensors"), strings.Repeat("y", 1000))
	writeFile(t, filepath.Join(cache, "models--org--big", "refs", "main"), strings.Repeat("a", 40))
	for _, c := range []struct {
		ref  string
		want int64
	}{
		{big + "+" + adapter, 3*(400<<20) + 10},
		{"org/big+" + adapter, 3*1000 + 10},
		{"org/big@" + strings.Repeat("a", 40), 3 * 1000},
		{"org/missing+" + adapter, 10},
		{big, 0}, // safetensors: nothing to convert
	} {
		p := planPrepare(map[string]any{"base_model": big, "models": []any{map[string]any{"model": c.ref}}})
		if got := prepMemory(p, cache); got != c.want {
			t.Errorf("%s: %d bytes, want %d", c.ref, got, c.want)
		}
	}
	// 1.2 GB of the fixture's 1 GiB budget: refused before Python runs.
	j := submit(t, f, "merge", map[string]any{"out_dir": filepath.Join(f.root, "out"), "config": map[string]any{
		"merge_method": "linear", "base_model": big, "models": []any{map[string]any{"model": big + "+" + adapter}}}})
	st := f.wait(t, j.ID)
	if st.State != store.Failed || !strings.Contains(st.Error, "preparing this merge's config in Python needs about") {
		t.Errorf("%s: %s", st.State, st.Error)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(f.env.Python), "started")); err == nil {
		t.Error("Python started for a preparation over the budget")
	}
	if _, err := os.Stat(f.env.jobScratch(j.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch folder left: %v", err)
	}
}

// TestEditRefsNamesAndOrder: the config walker names every reference as
// messages do, walks the paths under one key item by item in the order
// given, skips nil and misshapen values, and leaves its input unchanged.
func TestEditRefsNamesAndOrder(t *testing.T) {
	cfg := map[string]any{
		"npsfuse_vocabulary": map[string]any{"tokenizer_dir": "/t", "models": []any{map[string]any{"path": "/v0"}, "x"}},
		"base_model":         "/b",
		"models": []any{
			map[string]any{"model": "/m0", "parameters": map[string]any{"statistics": "/s0"}},
			map[string]any{"model": nil, "parameters": "bad"},
			map[string]any{"model": "/m2", "parameters": map[string]any{"statistics": ""}},
		},
		"slices": []any{map[string]any{"base_model": "/sb", "sources": []any{map[string]any{"model": "/sm"}, 3}}},
	}
	paths := []string{"npsfuse_vocabulary.tokenizer_dir", "npsfuse_vocabulary.models[].path",
		"base_model", "models[].model", "models[].parameters.statistics", "slices[].base_model", "slices[].sources[].model"}
	want := [][2]string{{"npsfuse_vocabulary.tokenizer_dir", "/t"}, {"npsfuse_vocabulary.models[0].path", "/v0"},
		{"base_model", "/b"}, {"models[0].model", "/m0"}, {"models[0].parameters.statistics", "/s0"},
		{"models[2].model", "/m2"}, {"models[2].parameters.statistics", ""},
		{"slices[0].base_model", "/sb"}, {"slices[0].sources[0].model", "/sm"}}
	got := refsAt(cfg, paths...)
	if len(got) != len(want) {
		t.Fatalf("refsAt = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("ref %d = %v, want %v", i, got[i], want[i])
		}
	}
	before, _ := json.Marshal(cfg)
	out, err := editRefs(cfg, "", func(v any, where string) (any, error) { return "R:" + where, nil }, paths...)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(cfg); string(after) != string(before) {
		t.Errorf("editRefs changed its input: %s", after)
	}
	m := out.(map[string]any)
	if m["base_model"] != "R:base_model" || m["models"].([]any)[1].(map[string]any)["model"] != nil ||
		m["models"].([]any)[1].(map[string]any)["parameters"] != "bad" ||
		m["slices"].([]any)[0].(map[string]any)["sources"].([]any)[1] != 3 {
		t.Errorf("editRefs = %v", out)
	}
	stop := errors.New("stop")
	if _, err := editRefs(cfg, "", func(v any, where string) (any, error) { return nil, stop }, paths...); err != stop {
		t.Errorf("editRefs error = %v, want the refFunc's", err)
	}
}
