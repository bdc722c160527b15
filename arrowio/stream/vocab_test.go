package stream

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

func TestIsVocabTensor(t *testing.T) {
	cases := []struct {
		name string
		want bool
	}{
		{"model.embed_tokens.weight", true},
		{"lm_head.weight", true},
		{"transformer.wte.weight", true},
		{"gpt_neox.embed_in.weight", true},
		{"embed_out.weight", true},
		{"output.weight", true},
		{"model.layers.0.self_attn.o_proj.weight", false},
		{"model.layers.0.attention.output.weight", false},
		{"model.norm.weight", false},
		{"transformer.wpe.weight", false},
		{"my_embed_tokens.weight", false},
	}
	for _, c := range cases {
		if got := IsVocabTensor(c.name); got != c.want {
			t.Errorf("IsVocabTensor(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

// vocabFamily is a base with 3 tokens and a fine-tune with 4 (its token 3
// is new), rows of width 2, an embedding, an LM head and a layer.
func vocabFamily(t *testing.T) (root, base, ft string) {
	t.Helper()
	mat := func(rows int, v ...float32) safetensors.Tensor {
		return safetensors.Tensor{DType: safetensors.F32, Shape: []int64{int64(rows), int64(len(v) / rows)}, Data: encode(v, safetensors.F32)}
	}
	b := tensors{
		"model.embed_tokens.weight": mat(3, 1, 2, 3, 4, 5, 6),
		"lm_head.weight":            mat(3, -1, -2, -3, -4, -5, -6),
		"model.layers.0.w":          mat(1, 1, 1),
	}
	f := tensors{ // the fine-tune stores its tokens in another order: (t1, t0, t2, t3)
		"model.embed_tokens.weight": mat(4, 30, 40, 10, 20, 50, 60, 70, 80),
		"lm_head.weight":            mat(4, -30, -40, -10, -20, -50, -60, -70, -80),
		"model.layers.0.w":          mat(1, 3, 5),
	}
	root, base, paths := setup(t, b, []tensors{f}, 1)
	return root, base, paths[0]
}

// The row maps permute every model's vocabulary tensors into the merged
// vocabulary; a token the base lacks takes the one model's row; padding
// rows are each model's mean; the output's config.json gets the new size
// and the tokenizer folder's files replace the base's.
func TestRunVocabulary(t *testing.T) {
	root, base, ft := vocabFamily(t)
	tokDir := filepath.Join(root, "tok")
	if err := os.MkdirAll(tokDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tokDir, "tokenizer.json"), []byte(`{"merged": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		vocab map[string]any
		embed []float32 // linear 1:1 of base and fine-tune
	}{
		{
			name: "union",
			vocab: map[string]any{"size": 4, "tokens": 4, "tokenizer_dir": tokDir,
				"models":   []any{map[string]any{"path": base, "rows": []int{0, 1, 2, -1}}, map[string]any{"path": ft, "rows": []int{1, 0, 2, 3}}},
				"defaults": []any{map[string]any{"row": 3, "from": []any{[]int{1, 3}}}}},
			// base rows (1,2),(3,4),(5,6),(70,80); ft rows (10,20),(30,40),(50,60),(70,80)
			embed: []float32{5.5, 11, 16.5, 22, 27.5, 33, 70, 80},
		},
		{
			name: "base vocabulary, padded to 4",
			vocab: map[string]any{"size": 4, "tokens": 3,
				"models": []any{map[string]any{"path": base, "rows": []int{0, 1, 2}}, map[string]any{"path": ft, "rows": []int{1, 0, 2}}}},
			// padding: base mean (3, 4), ft mean (30, 40)
			embed: []float32{5.5, 11, 16.5, 22, 27.5, 33, 16.5, 22},
		},
		{
			name: "zero default, averaged default",
			vocab: map[string]any{"size": 4, "tokens": 4,
				"models": []any{map[string]any{"path": base, "rows": []int{0, -1, 2, -1}}, map[string]any{"path": ft, "rows": []int{1, -1, 2, 3}}},
				"defaults": []any{map[string]any{"row": 1, "from": []any{}},
					map[string]any{"row": 3, "from": []any{[]int{0, 1}, []int{1, 3}}}}},
			// row 3: base takes ((3,4)+(70,80))/2 = (36.5, 42); ft its own (70, 80)
			embed: []float32{5.5, 11, 0, 0, 27.5, 33, 53.25, 61},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, _ := json.Marshal(c.vocab)
			text := yamlConfig("linear", base, []string{base, ft}, "", nil, "tokenizer_source: union\nnpsfuse_vocabulary: "+string(v)+"\n")
			_, out, err := run(t, context.Background(), t.TempDir(), text, Options{})
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, out)
			e := got["model.embed_tokens.weight"]
			if !slices.Equal(e.Shape, []int64{4, 2}) || !slices.Equal(decode(e.Data, e.DType), c.embed) {
				t.Errorf("embed_tokens %v %v, want [4 2] %v", e.Shape, decode(e.Data, e.DType), c.embed)
			}
			h := decode(got["lm_head.weight"].Data, safetensors.F32)
			for i := range h {
				if h[i] != -c.embed[i] {
					t.Errorf("lm_head %v, want the negated embedding %v", h, c.embed)
					break
				}
			}
			if w := decode(got["model.layers.0.w"].Data, safetensors.F32); !slices.Equal(w, []float32{2, 3}) {
				t.Errorf("layer %v, want [2 3]", w)
			}
			raw, err := os.ReadFile(filepath.Join(out, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(raw), `"vocab_size": 4`) {
				t.Errorf("config.json lacks vocab_size 4:\n%s", raw)
			}
			tok, _ := os.ReadFile(filepath.Join(out, "tokenizer.json"))
			if merged := strings.Contains(string(tok), "merged"); merged != (c.vocab["tokenizer_dir"] != nil) {
				t.Errorf("tokenizer.json %s: the merged tokenizer's file should replace the base's exactly when given", tok)
			}
		})
	}
}

// Without a tokenizer rule, vocabularies of different sizes are refused
// with the way out; a tokenizer config without row maps names npsfuse merge.
func TestVocabularyErrors(t *testing.T) {
	_, base, ft := vocabFamily(t)
	cfg := mustParse(t, yamlConfig("linear", base, []string{base, ft}, "", nil, ""))
	_, err := Run(context.Background(), cfg, Options{OutDir: filepath.Join(t.TempDir(), "out")})
	if !errors.Is(err, ErrInput) {
		t.Fatalf("error %v, want ErrInput", err)
	}
	for _, w := range []string{"vocabularies differ", "base " + base + ": 3", ft + ": 4", "tokenizer_source: base", "union", "npsfuse merge"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	cases := []struct {
		name, extra, want string
	}{
		{"union without row maps", "tokenizer_source: union\n", "npsfuse merge"},
		{"block without row maps", "tokenizer: {source: base}\n", "npsfuse merge"},
		{"chat template without row maps", "chat_template: chatml\n", "npsfuse merge"},
		{"both", "tokenizer_source: union\ntokenizer: {source: base}\n", "not both"},
		{"unknown block key", "tokenizer: {sauce: base}\n", `unknown key "sauce"`},
		{"rows of the wrong length", `npsfuse_vocabulary: {size: 4, tokens: 4, models: [{path: ` + base + `, rows: [0]}]}` + "\n", "1 rows, want 4"},
		{"model without a row map", `npsfuse_vocabulary: {size: 3, tokens: 3, models: [{path: ` + base + `, rows: [0, 1, 2]}]}` + "\n", "no row map for " + ft},
		{"size below tokens", `npsfuse_vocabulary: {size: 2, tokens: 3}` + "\n", "need 0 < tokens ≤ size"},
		{"default out of range", `npsfuse_vocabulary: {size: 3, tokens: 3, defaults: [{row: 7, from: []}]}` + "\n", "row 7 out of range"},
		{"unknown vocabulary key", `npsfuse_vocabulary: {size: 3, tokens: 3, extra: 1}` + "\n", "unknown field"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(yamlConfig("linear", base, []string{base, ft}, "", nil, c.extra)), "")
			if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want ErrConfig saying %q", err, c.want)
			}
		})
	}
}

// A row map that reaches past a model's rows is an input error naming the
// tensor, not a panic.
func TestVocabularyRowOutOfRange(t *testing.T) {
	_, base, ft := vocabFamily(t)
	v := `{size: 3, tokens: 3, models: [{path: ` + base + `, rows: [0, 1, 9]}, {path: ` + ft + `, rows: [0, 1, 2]}]}`
	cfg := mustParse(t, yamlConfig("linear", base, []string{base, ft}, "", nil, "tokenizer_source: base\nnpsfuse_vocabulary: "+v+"\n"))
	_, err := Run(context.Background(), cfg, Options{OutDir: filepath.Join(t.TempDir(), "out")})
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "wants row 9") {
		t.Fatalf("error %v, want ErrInput about row 9", err)
	}
}

// Whatever npsfuse_vocabulary holds, parsing reports problems instead of
// panicking, and an accepted vocabulary is consistent.
func FuzzParseVocabulary(f *testing.F) {
	f.Add(`{size: 4, tokens: 3, models: [{path: base, rows: [0, 1, -1]}], defaults: [{row: 2, from: [[0, 1]]}]}`)
	f.Add(`{size: 0, tokens: 0}`)
	f.Add(`{size: -1, tokens: 9, defaults: [{row: 0, from: [[5, -2]]}]}`)
	f.Add(`[1, 2]`)
	root := configRoot(f)
	f.Fuzz(func(t *testing.T, v string) {
		text := "merge_method: linear\nmodels:\n  - model: base\ntokenizer_source: union\nnpsfuse_vocabulary: " + v + "\n"
		cfg, err := ParseConfig([]byte(text), root)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %q does not wrap ErrConfig", err)
			}
			return
		}
		voc := cfg.Vocab
		if voc == nil {
			t.Fatal("accepted without a vocabulary")
		}
		if voc.Tokens == 0 {
			return
		}
		if voc.Tokens < 0 || voc.Size < voc.Tokens {
			t.Fatalf("accepted size %d, tokens %d", voc.Size, voc.Tokens)
		}
		for _, m := range voc.Models {
			if len(m.Rows) != voc.Tokens || slices.ContainsFunc(m.Rows, func(r int32) bool { return r < -1 }) {
				t.Fatalf("accepted rows %v", m.Rows)
			}
		}
		for row, refs := range voc.Defaults {
			if row < 0 || row >= voc.Tokens {
				t.Fatalf("accepted default row %d", row)
			}
			for _, r := range refs {
				if r.Model < 0 || r.Model >= len(voc.Models) || r.Row < 0 {
					t.Fatalf("accepted default %v", r)
				}
			}
		}
	})
}

// sliceVocabFamily is vocabFamily with two layers and a final norm, for
// slices configs.
func sliceVocabFamily(t *testing.T) (base, ft string) {
	t.Helper()
	mat := func(rows int, v ...float32) safetensors.Tensor {
		return safetensors.Tensor{DType: safetensors.F32, Shape: []int64{int64(rows), int64(len(v) / rows)}, Data: encode(v, safetensors.F32)}
	}
	b := tensors{
		"model.embed_tokens.weight":   mat(3, 1, 2, 3, 4, 5, 6),
		"lm_head.weight":              mat(3, -1, -2, -3, -4, -5, -6),
		"model.layers.0.mlp.weight":   mat(1, 1, 1),
		"model.layers.1.mlp.weight":   mat(1, 2, 2),
		"model.norm.weight":           mat(1, 1, 1),
		"model.layers.1.mlp.up.bias":  mat(1, 7),
		"model.layers.0.mlp.up.bias":  mat(1, 8),
		"model.embed_positions.extra": mat(1, 9),
	}
	f := tensors{ // tokens stored as (t1, t0, t2, t3)
		"model.embed_tokens.weight":   mat(4, 30, 40, 10, 20, 50, 60, 70, 80),
		"lm_head.weight":              mat(4, -30, -40, -10, -20, -50, -60, -70, -80),
		"model.layers.0.mlp.weight":   mat(1, 3, 5),
		"model.layers.1.mlp.weight":   mat(1, 4, 6),
		"model.norm.weight":           mat(1, 3, 3),
		"model.layers.1.mlp.up.bias":  mat(1, 17),
		"model.layers.0.mlp.up.bias":  mat(1, 18),
		"model.embed_positions.extra": mat(1, 19),
	}
	_, base, paths := setup(t, b, []tensors{f}, 1)
	return base, paths[0]
}

// A slices merge with a merged vocabulary: the embeddings come from the
// first slice's sources with that group's default rows, the LM head from
// the last slice's with its own (mergekit picks a token's default among
// the models the tensor merges); a group without defaults is an error.
func TestRunVocabularySlices(t *testing.T) {
	base, ft := sliceVocabFamily(t)
	models := []any{map[string]any{"path": base, "rows": []int{0, 1, 2, -1}}, map[string]any{"path": ft, "rows": []int{1, 0, 2, 3}}}
	embedSet := map[string]any{"slice": 0, "sources": []int{0, 1}, "defaults": []any{map[string]any{"row": 3, "from": []any{[]int{1, 3}}}}}
	headSet := map[string]any{"slice": 1, "sources": []int{0}, "defaults": []any{}}
	slicesYAML := "merge_method: linear\nslices:\n" +
		"  - sources: [{model: " + base + ", layer_range: [0, 1]}, {model: " + ft + ", layer_range: [0, 1]}]\n" +
		"  - sources: [{model: " + ft + ", layer_range: [1, 2]}]\n" +
		"tokenizer_source: union\nnpsfuse_vocabulary: "
	vocab := func(sets ...any) string {
		v, _ := json.Marshal(map[string]any{"size": 4, "tokens": 4, "models": models, "slices": sets})
		return string(v) + "\n"
	}
	_, out, err := run(t, context.Background(), t.TempDir(), slicesYAML+vocab(embedSet, headSet), Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, out)
	want := map[string][]float32{
		// base rows (1,2),(3,4),(5,6),(70,80: ft's, the group's default); ft (10,20),(30,40),(50,60),(70,80)
		"model.embed_tokens.weight": {5.5, 11, 16.5, 22, 27.5, 33, 70, 80},
		"lm_head.weight":            {-10, -20, -30, -40, -50, -60, -70, -80}, // ft's alone, permuted
		"model.layers.0.mlp.weight": {2, 3},
		"model.layers.1.mlp.weight": {4, 6},
		"model.norm.weight":         {3, 3},
	}
	for name, w := range want {
		if g := decode(got[name].Data, got[name].DType); !slices.Equal(g, w) {
			t.Errorf("%s = %v, want %v", name, g, w)
		}
	}
	if s := got["lm_head.weight"].Shape; !slices.Equal(s, []int64{4, 2}) {
		t.Errorf("lm_head shape %v, want [4 2]", s)
	}
	raw, err := os.ReadFile(filepath.Join(out, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"vocab_size": 4`) {
		t.Errorf("config.json lacks vocab_size 4:\n%s", raw)
	}

	// The head's group has no defaults: refused before anything is written.
	root := t.TempDir()
	_, _, err = run(t, context.Background(), root, slicesYAML+vocab(embedSet), Options{})
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "no default rows for the head of slices[1]") {
		t.Errorf("error %v, want ErrInput naming the head of slices[1]", err)
	}
	assertNothingLeft(t, root, nil)
	for _, c := range []struct{ set, want string }{
		{`{slice: 2, sources: [0], defaults: []}`, "slice 2 is not one of the config's 2 slices"},
		{`{slice: 1, sources: [1], defaults: []}`, "source 1 is not one of slices[1]'s 1 sources"},
		{`{slice: 0, sources: [0], defaults: [{row: 9, from: []}]}`, "npsfuse_vocabulary.slices[0].defaults: row 9 out of range"},
	} {
		v := `{size: 4, tokens: 4, models: [{path: ` + base + `, rows: [0, 1, 2, -1]}, {path: ` + ft + `, rows: [1, 0, 2, 3]}], slices: [` + c.set + "]}\n"
		if _, err := ParseConfig([]byte(slicesYAML+v), ""); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want ErrConfig saying %q", c.set, err, c.want)
		}
	}
}

// Slices configs with tokenizer keys and a merged vocabulary parse, and
// whatever their vocabulary holds, the parser reports problems instead of
// panicking; an accepted one has consistent slice defaults.
func FuzzParseSlicesVocabulary(f *testing.F) {
	f.Add(`{size: 4, tokens: 3, models: [{path: ft0, rows: [0, 1, -1]}, {path: ft1, rows: [0, 1, 2]}], slices: [{slice: 0, sources: [0], defaults: [{row: 2, from: [[1, 2]]}]}, {slice: 1, sources: [0], defaults: []}]}`)
	f.Add(`{size: 3, tokens: 3, slices: [{slice: -1, sources: [7], defaults: [{row: 0, from: [[0, 0]]}]}]}`)
	f.Add(`{size: 0, tokens: 0, slices: [{}]}`)
	f.Add(`{slices: 3}`)
	root := configRoot(f)
	f.Fuzz(func(t *testing.T, v string) {
		text := "merge_method: passthrough\nslices:\n  - sources: [{model: ft0, layer_range: [0, 2]}]\n  - sources: [{model: ft1, layer_range: [2, 4]}]\n" +
			"tokenizer: {source: union, pad_to_multiple_of: 4}\nchat_template: chatml\nnpsfuse_vocabulary: " + v + "\n"
		cfg, err := ParseConfig([]byte(text), root)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %q does not wrap ErrConfig", err)
			}
			return
		}
		if cfg.Vocab == nil || len(cfg.Slices) != 2 {
			t.Fatalf("accepted without a vocabulary or its slices: %+v", cfg)
		}
		for _, sd := range cfg.Vocab.SliceDefaults {
			if sd.Slice < 0 || sd.Slice >= 2 || slices.ContainsFunc(sd.Sources, func(k int) bool { return k != 0 }) {
				t.Fatalf("accepted slice defaults %+v", sd)
			}
			for row, refs := range sd.Defaults {
				if row < 0 || row >= cfg.Vocab.Tokens {
					t.Fatalf("accepted default row %d", row)
				}
				for _, r := range refs {
					if r.Model < 0 || r.Model >= len(cfg.Vocab.Models) || r.Row < 0 {
						t.Fatalf("accepted default %v", r)
					}
				}
			}
		}
	})
}
