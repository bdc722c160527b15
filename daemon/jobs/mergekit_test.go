package jobs

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// moeCfg is a mergekit-moe config over the given folders.
func moeCfg(base string, experts ...string) map[string]any {
	var ex []any
	for _, e := range experts {
		ex = append(ex, map[string]any{"source_model": e, "positive_prompts": []any{"x"}})
	}
	return map[string]any{"base_model": base, "gate_mode": "random", "experts": ex}
}

// TestMergekitSubmit: which specs are moe or multi jobs, and what is
// refused at submit, before any Python runs: no python setting (naming
// it), a path outside the data roots (either side of NAME+LORA, a link in
// a model folder), a relative path, a document name that is no plain
// name, the out_dir and intermediate_dir rules.
func TestMergekitSubmit(t *testing.T) {
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "m", "config.json"), "{}")
	f := prepFixture(t, `touch "$(dirname "$0")/started"; exit 1`)
	model := func(name string) string {
		p := filepath.Join(f.root, name)
		writeFile(t, filepath.Join(p, "config.json"), "{}")
		writeFile(t, filepath.Join(p, "model.safetensors"), "x")
		return p
	}
	base, e1, e2 := model("base"), model("e1"), model("e2")
	linked := model("linked")
	if err := os.Symlink(filepath.Join(outside, "m", "config.json"), filepath.Join(linked, "tokenizer.json")); err != nil {
		t.Fatal(err)
	}
	adapter := filepath.Join(f.root, "adapter")
	writeFile(t, filepath.Join(adapter, "adapter_config.json"), "{}")
	out := filepath.Join(f.root, "out")
	inter := filepath.Join(f.root, "inter")
	doc := func(name string, models ...string) map[string]any {
		var ms []any
		for _, m := range models {
			ms = append(ms, map[string]any{"model": m})
		}
		d := map[string]any{"merge_method": "linear", "base_model": base, "models": ms}
		if name != "" {
			d["name"] = name
		}
		return d
	}
	multi := func(docs ...map[string]any) []map[string]any { return docs }
	t.Setenv("HF_HUB_CACHE", filepath.Join(outside, "hub"))
	for _, c := range []struct {
		name string
		spec map[string]any
		kind fault.Kind
		msg  string // "" = accepted
	}{
		{"moe", map[string]any{"config": moeCfg(base, e1, e2), "out_dir": out, "seed": 3}, 0, ""},
		{"moe without out_dir", map[string]any{"config": moeCfg(base, e1, e2)}, fault.InvalidInput, "give out_dir"},
		{"moe expert outside", map[string]any{"config": moeCfg(base, e1, filepath.Join(outside, "m")), "out_dir": out}, fault.Permission, "outside the data roots"},
		{"moe base links out", map[string]any{"config": moeCfg(linked, e1, e2), "out_dir": out}, fault.Permission, "is a link to"},
		{"moe relative", map[string]any{"config": moeCfg("base", e1, e2), "out_dir": out}, fault.InvalidInput, "must be an absolute path"},
		{"moe hub id", map[string]any{"config": moeCfg(base, e1, "org/name"), "out_dir": out}, fault.InvalidInput, "must be an absolute path"},
		{"moe upload", map[string]any{"config": moeCfg(base, e1, "upload:x"), "out_dir": out}, fault.InvalidInput, "an upload"},
		{"moe number", map[string]any{"config": map[string]any{"base_model": 3, "experts": []any{}}, "out_dir": out}, fault.InvalidInput, "must be a path"},
		{"moe dtype option", map[string]any{"config": moeCfg(base, e1, e2), "out_dir": out, "dtype": "float16"}, fault.InvalidInput, "gives its dtype"},
		{"moe out_dir outside", map[string]any{"config": moeCfg(base, e1, e2), "out_dir": filepath.Join(outside, "o")}, fault.Permission, "outside the data roots"},
		{"moe tensor result", map[string]any{"config": moeCfg(base, e1, e2), "out_dir": out, "result": map[string]any{"shm": true}}, fault.InvalidInput, "never a tensor result"},
		{"seed on a merge", map[string]any{"config": doc("", e1), "out_dir": out, "seed": 1}, fault.InvalidInput, "mergekit-moe configs"},
		{"lazy on a merge", map[string]any{"config": doc("", e1), "out_dir": out, "lazy": false}, fault.InvalidInput, "mergekit-multi"},
		{"multi", map[string]any{"configs": multi(doc("pair", e1, e2), doc("", "pair", e1)), "out_dir": out}, 0, ""},
		{"multi name+lora", map[string]any{"configs": multi(doc("pair", e1, e2), doc("", "pair+"+adapter)), "out_dir": out, "intermediate_dir": inter}, 0, ""},
		{"multi lora outside", map[string]any{"configs": multi(doc("pair", e1, e2), doc("", "pair+"+filepath.Join(outside, "m"))), "out_dir": out}, fault.Permission, "outside the data roots"},
		{"multi model outside", map[string]any{"configs": multi(doc("pair", e1, filepath.Join(outside, "m")), doc("", "pair")), "out_dir": out}, fault.Permission, "configs[0].models[1].model"},
		{"multi unknown name", map[string]any{"configs": multi(doc("pair", e1, e2), doc("", "pear")), "out_dir": out}, fault.InvalidInput, "or the name of another document"},
		{"multi hub cache outside", map[string]any{"configs": multi(doc("", "org/name")), "out_dir": out}, fault.Permission, "Hugging Face cache"},
		{"multi name with a slash", map[string]any{"configs": multi(doc("../x", e1), doc("", e2)), "out_dir": out}, fault.InvalidInput, "plain name"},
		{"multi name ..", map[string]any{"configs": multi(doc("..", e1), doc("", e2)), "out_dir": out}, fault.InvalidInput, "plain name"},
		{"multi duplicate", map[string]any{"configs": multi(doc("a", e1), doc("a", e2)), "intermediate_dir": inter}, fault.InvalidInput, "duplicate merge name"},
		{"multi two finals", map[string]any{"configs": multi(doc("", e1), doc("", e2)), "out_dir": out}, fault.InvalidInput, "more than one document without a name"},
		{"multi final without out_dir", map[string]any{"configs": multi(doc("a", e1), doc("", e2))}, fault.InvalidInput, "give out_dir"},
		{"multi out_dir without final", map[string]any{"configs": multi(doc("a", e1)), "out_dir": out, "intermediate_dir": inter}, fault.InvalidInput, "drop it"},
		{"multi named only", map[string]any{"configs": multi(doc("a", e1)), "intermediate_dir": inter}, 0, ""},
		{"multi named only without intermediate_dir", map[string]any{"configs": multi(doc("a", e1))}, fault.InvalidInput, "give intermediate_dir"},
		{"multi intermediate_dir outside", map[string]any{"configs": multi(doc("a", e1), doc("", "a")), "out_dir": out, "intermediate_dir": filepath.Join(outside, "i")}, fault.Permission, "intermediate_dir"},
		{"multi out_dir in intermediate_dir", map[string]any{"configs": multi(doc("a", e1), doc("", "a")), "out_dir": filepath.Join(inter, "final"), "intermediate_dir": inter}, fault.InvalidInput, "must not hold one another"},
		{"multi empty", map[string]any{"configs": []any{}, "out_dir": out}, fault.InvalidInput, "configs is empty"},
		{"config and configs", map[string]any{"config": doc("", e1), "configs": multi(doc("", e1)), "out_dir": out}, fault.InvalidInput, "exclude each other"},
	} {
		raw, _ := json.Marshal(c.spec)
		_, _, err := f.r.Submit("merge", raw, "")
		if c.msg == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || fault.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v (kind %v), want %v with %q", c.name, err, fault.KindOf(err), c.kind, c.msg)
		}
	}
	// Without python: refused, naming the setting and the command.
	bare := newFixture(t, 1)
	for _, c := range []struct {
		spec map[string]any
		cmd  string
	}{
		{map[string]any{"config": moeCfg(base, e1, e2), "out_dir": out}, "npsfuse moe CONFIG OUT_DIR"},
		{map[string]any{"configs": multi(doc("a", e1), doc("", "a")), "out_dir": out}, "npsfuse multi"},
	} {
		raw, _ := json.Marshal(c.spec)
		_, _, err := bare.r.Submit("merge", raw, "")
		if err == nil || !strings.Contains(err.Error(), "NPSFUSE_PYTHON") || !strings.Contains(err.Error(), c.cmd) {
			t.Errorf("without python: %v", err)
		}
	}
}

// TestMergekitRun: the job hands Python its request, reads its progress
// lines, moves what Python wrote into out_dir by a rename of the output's
// temporary folder (nothing left beside out_dir, the scratch folder
// removed), and keeps out_dir's force rule.
func TestMergekitRun(t *testing.T) {
	f := prepFixture(t, `req=$(cat); printf '%s' "$req" > "$(dirname "$0")/request"
out=$(printf '%s' "$req" | sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p')
mkdir -p "$out"; echo w > "$out/model.safetensors"; echo c > "$out/config.json"
echo '{"progress": {"message": "half way"}}'
echo '{"result": {"out_dir": "'"$out"'"}}'`)
	base := filepath.Join(f.root, "base")
	writeFile(t, filepath.Join(base, "model.safetensors"), "x")
	out := filepath.Join(f.root, "out")
	j := submit(t, f, "merge", map[string]any{"config": moeCfg(base, base), "out_dir": out, "seed": 7, "allow_all_same": true})
	st := f.wait(t, j.ID)
	if st.State != store.Done {
		t.Fatalf("%s: %s", st.State, st.Error)
	}
	var res map[string]any
	if err := json.Unmarshal(st.Result, &res); err != nil || res["kind"] != "checkpoint" || res["out_dir"] != out {
		t.Errorf("result %s (%v)", st.Result, err)
	}
	for _, n := range []string{"model.safetensors", "config.json"} {
		if _, err := os.Stat(filepath.Join(out, n)); err != nil {
			t.Error(err)
		}
	}
	entries, _ := os.ReadDir(f.root)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left beside out_dir: %s", e.Name())
		}
	}
	if _, err := os.Stat(f.env.jobScratch(j.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch folder left: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(f.env.Python), "request"))
	if err != nil {
		t.Fatal(err)
	}
	var req map[string]any
	if err := json.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	if req["mode"] != "moe" || req["seed"] != 7.0 || req["allow_all_same"] != true || req["copy_tokenizer"] != true ||
		!strings.HasPrefix(req["out_dir"].(string), filepath.Join(f.root, ".out.npsfuse-tmp-")) {
		t.Errorf("request %s", raw)
	}
	// out_dir now holds a model: refused without force (before Python
	// runs), replaced with it.
	os.Remove(filepath.Join(filepath.Dir(f.env.Python), "request"))
	j = submit(t, f, "merge", map[string]any{"config": moeCfg(base, base), "out_dir": out})
	if st := f.wait(t, j.ID); st.State != store.Failed || !strings.Contains(st.Error, "not empty") {
		t.Errorf("%s: %s", st.State, st.Error)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(f.env.Python), "request")); err == nil {
		t.Error("Python ran for an out_dir in the way")
	}
	j = submit(t, f, "merge", map[string]any{"config": moeCfg(base, base), "out_dir": out, "force": true})
	if st := f.wait(t, j.ID); st.State != store.Done {
		t.Errorf("force: %s: %s", st.State, st.Error)
	}
	// A Python error keeps its kind and message; nothing is committed.
	f.env.Python = fakePython(t, `cat >/dev/null; echo '{"error": {"kind": "invalid_input", "message": "gate_mode nope"}}'; exit 1`)
	out2 := filepath.Join(f.root, "out2")
	j = submit(t, f, "merge", map[string]any{"config": moeCfg(base, base), "out_dir": out2})
	if st := f.wait(t, j.ID); st.State != store.Failed || !strings.Contains(st.Error, "gate_mode nope") {
		t.Errorf("%s: %s", st.State, st.Error)
	}
	if _, err := os.Stat(out2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("out_dir made by a failed job: %v", err)
	}
}

// TestMultiRequest: a multi job's request carries the documents as given
// (names kept), intermediate_dir, lazy and the merge options.
func TestMultiRequest(t *testing.T) {
	e := &Env{}
	e.Pool.Threads = 3
	lazy := false
	s := &mergeSpec{Configs: []map[string]any{{"name": "a"}, {}}, Lazy: &lazy, DType: "bfloat16", ShardSize: 100, Force: true}
	p := &pyMerge{kind: "multi", inter: "/r/i"}
	req := p.request(e, s, "/r/.o.npsfuse-tmp-1/output")
	raw, _ := json.Marshal(req)
	want := `{"configs":[{"name":"a"},{}],"intermediate_dir":"/r/i","lazy":false,"mode":"multi",` +
		`"options":{"allow_missing":false,"dtype":"bfloat16","force":true,"shard_size":100,"threads":3},"out_dir":"/r/.o.npsfuse-tmp-1/output"}`
	if string(raw) != want {
		t.Errorf("request\n%s\nwant\n%s", raw, want)
	}
}

// TestAnswerLines: progress lines are handed on as they arrive, in any
// write sizes; the answer is the last other line.
func TestAnswerLines(t *testing.T) {
	var got []string
	a := &answerLines{progress: func(m string) { got = append(got, m) }}
	text := "noise\n{\"progress\": {\"message\": \"one\"}}\n\n{\"progress\": {\"message\": \"two\"}}\n{\"result\": {}}"
	for i := 0; i < len(text); i += 5 {
		a.Write([]byte(text[i:min(i+5, len(text))]))
	}
	if ans := string(a.answer()); ans != `{"result": {}}` || strings.Join(got, ",") != "one,two" {
		t.Errorf("answer %q, progress %q", ans, got)
	}
}
