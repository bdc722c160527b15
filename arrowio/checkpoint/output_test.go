package checkpoint

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

func info(name string, bytes int64) safetensors.TensorInfo {
	return safetensors.TensorInfo{Name: name, DType: safetensors.U8, Shape: []int64{bytes}, End: bytes}
}

func TestPlanShards(t *testing.T) {
	cases := []struct {
		name   string
		sizes  []int64
		max    int64
		groups [][]string
		files  []string
	}{
		{"all in one", []int64{10, 10, 10}, 100, [][]string{{"t0", "t1", "t2"}}, []string{SingleFile}},
		{"exact fit", []int64{10, 10, 10}, 20, [][]string{{"t0", "t1"}, {"t2"}},
			[]string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}},
		{"one byte short", []int64{10, 10, 10}, 19, [][]string{{"t0"}, {"t1"}, {"t2"}},
			[]string{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}},
		{"tensor over the limit gets its own file", []int64{5, 50, 5, 5}, 20, [][]string{{"t0"}, {"t1"}, {"t2", "t3"}},
			[]string{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}},
		{"no limit", []int64{1e9, 1e9}, 0, [][]string{{"t0", "t1"}}, []string{SingleFile}},
		{"empty tensors", []int64{0, 0, 8}, 8, [][]string{{"t0", "t1", "t2"}}, []string{SingleFile}},
		{"no tensors", nil, 8, [][]string{nil}, []string{SingleFile}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ts []safetensors.TensorInfo
			for i, s := range c.sizes {
				ts = append(ts, info("t"+string(rune('0'+i)), s))
			}
			shards := PlanShards(ts, c.max)
			var groups [][]string
			var files []string
			for _, s := range shards {
				var g []string
				for _, x := range s.Tensors {
					g = append(g, x.Name)
				}
				groups = append(groups, g)
				files = append(files, s.File)
			}
			if !slices.EqualFunc(groups, c.groups, slices.Equal) || !slices.Equal(files, c.files) {
				t.Errorf("got %q %q, want %q %q", groups, files, c.groups, c.files)
			}
		})
	}
}

func TestWriteIndex(t *testing.T) {
	dir := t.TempDir()
	one := PlanShards([]safetensors.TensorInfo{info("a", 4)}, 0)
	if err := WriteIndex(dir, one); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, IndexFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a single shard got an index (%v)", err)
	}
	shards := PlanShards([]safetensors.TensorInfo{info("a", 4), info("b", 6), info("c", 3)}, 8)
	if err := WriteIndex(dir, shards); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "model-00001-of-00003.safetensors", "b": "model-00002-of-00003.safetensors", "c": "model-00003-of-00003.safetensors"}
	if idx.Metadata["total_size"] != 13 || len(idx.WeightMap) != 3 {
		t.Errorf("index %s", raw)
	}
	for k, v := range want {
		if idx.WeightMap[k] != v {
			t.Errorf("weight_map[%s] = %q, want %q", k, idx.WeightMap[k], v)
		}
	}
}

func TestCopyConfig(t *testing.T) {
	cases := []struct {
		name, config string
		want         map[string]string // key → JSON value in the output
		absent       []string
	}{
		{"torch_dtype replaced",
			`{"model_type": "llama", "torch_dtype": "float32", "vocab_size": 128256, "rope_theta": 500000.0, "eos_token_id": [128001, 128009], "initializer_range": 0.02}`,
			map[string]string{"torch_dtype": `"bfloat16"`, "vocab_size": "128256", "rope_theta": "500000.0", "eos_token_id": "[128001,128009]", "initializer_range": "0.02"},
			[]string{"dtype"}},
		{"neither key: torch_dtype added", `{"model_type": "gpt2"}`, map[string]string{"torch_dtype": `"bfloat16"`}, []string{"dtype"}},
		{"newer dtype key kept alone", `{"model_type": "llama", "dtype": "float32"}`, map[string]string{"dtype": `"bfloat16"`}, []string{"torch_dtype"}},
		{"both keys set", `{"dtype": "float16", "torch_dtype": "float16"}`, map[string]string{"dtype": `"bfloat16"`, "torch_dtype": `"bfloat16"`}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			write(t, filepath.Join(src, "config.json"), []byte(c.config))
			if err := CopyConfig(src, dst, "bfloat16"); err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(filepath.Join(dst, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range c.want {
				var compact strings.Builder
				for _, r := range string(got[k]) {
					if r != ' ' && r != '\n' {
						compact.WriteRune(r)
					}
				}
				if compact.String() != v {
					t.Errorf("%s = %s, want %s", k, got[k], v)
				}
			}
			for _, k := range c.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s was added: %s", k, raw)
				}
			}
		})
	}
	t.Run("tokenizer and generation files, nothing else", func(t *testing.T) {
		src, dst := t.TempDir(), t.TempDir()
		for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "tokenizer.model", "training_args.bin", "pytorch_model.bin", "model.safetensors"} {
			write(t, filepath.Join(src, f), []byte("content of "+f))
		}
		if err := CopyConfig(src, dst, "float32"); err != nil {
			t.Fatal(err)
		}
		want := []string{"generation_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}
		es, _ := os.ReadDir(dst)
		var got []string
		for _, e := range es {
			got = append(got, e.Name())
			b, _ := os.ReadFile(filepath.Join(dst, e.Name()))
			if string(b) != "content of "+e.Name() {
				t.Errorf("%s holds %q", e.Name(), b)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("copied %q, want %q (no config.json: the source has none)", got, want)
		}
	})
	t.Run("invalid config.json", func(t *testing.T) {
		src := t.TempDir()
		p := write(t, filepath.Join(src, "config.json"), []byte("{model_type"))
		if err := CopyConfig(src, t.TempDir(), "float32"); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("error %v does not name %s", err, p)
		}
	})
}

func TestModelType(t *testing.T) {
	dir := t.TempDir()
	if got := ModelType(dir); got != "" {
		t.Errorf("no config.json: %q", got)
	}
	write(t, filepath.Join(dir, "config.json"), []byte(`{"model_type": " gpt2 "}`))
	if got := ModelType(dir); got != "gpt2" {
		t.Errorf("ModelType = %q", got)
	}
	write(t, filepath.Join(dir, "config.json"), []byte(`{"model_type": 3}`))
	if got := ModelType(dir); got != "" {
		t.Errorf("bad config: %q", got)
	}
}

// The output is built in a temporary folder beside the destination and
// moved into place by Commit; Abort leaves the destination untouched.
func TestOutput(t *testing.T) {
	root := t.TempDir()
	dest := filepath.Join(root, "merged")
	o, err := NewOutput(dest, false)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(o.Dir()) != root || !strings.HasPrefix(filepath.Base(o.Dir()), ".merged.npsfuse-tmp-") || o.Final() != dest {
		t.Errorf("Dir %q Final %q", o.Dir(), o.Final())
	}
	write(t, filepath.Join(o.Dir(), "a"), []byte("1"))
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Error("the destination exists before Commit")
	}
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("after Commit: %v %v", st, err)
	}
	if err := o.Commit(); !errors.Is(err, ErrOutput) {
		t.Errorf("second Commit: %v", err)
	}
	o.Abort() // no-op after Commit
	if _, err := os.Stat(filepath.Join(dest, "a")); err != nil {
		t.Errorf("Abort after Commit removed the output: %v", err)
	}

	// Non-empty: refused without force, untouched by an aborted forced run,
	// replaced by a committed one.
	if _, err := NewOutput(dest, false); !errors.Is(err, ErrOutput) || !strings.Contains(err.Error(), "exists and is not empty (use --force to replace it)") {
		t.Errorf("non-empty destination: %v", err)
	}
	o, err = NewOutput(dest+"/", true)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(o.Dir(), "b"), []byte("2"))
	o.Abort()
	if got := entriesOf(t, root); !slices.Equal(got, []string{"merged"}) {
		t.Errorf("after Abort the parent holds %q", got)
	}
	if got := entriesOf(t, dest); !slices.Equal(got, []string{"a"}) {
		t.Errorf("after Abort the destination holds %q", got)
	}
	o, err = NewOutput(dest, true)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(o.Dir(), "b"), []byte("2"))
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := entriesOf(t, dest); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after a forced Commit the destination holds %q", got)
	}
	if got := entriesOf(t, root); !slices.Equal(got, []string{"merged"}) {
		t.Errorf("after a forced Commit the parent holds %q", got)
	}

	file := write(t, filepath.Join(root, "file"), nil)
	if _, err := NewOutput(file, true); !errors.Is(err, ErrOutput) || !strings.Contains(err.Error(), "is not a folder") {
		t.Errorf("file as destination: %v", err)
	}
}

func entriesOf(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
