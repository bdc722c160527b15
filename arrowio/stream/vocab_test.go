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
