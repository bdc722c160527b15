package stream

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/gocore/merge"
)

// The transposed patterns of a config: absent means the base's model
// type decides, an empty list means none, and patterns follow merge's
// rule (bare dot-suffixes match), as in npsfuse.merge.
func TestTransposedPatternsOfAConfig(t *testing.T) {
	root := configRoot(t)
	head := "merge_method: della\nbase_model: base\nmodels:\n  - model: ft0\n"
	if err := os.WriteFile(filepath.Join(root, "base", "config.json"), []byte(`{"model_type": "gpt2"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, yaml string
		want       []string // tensors flagged among names
	}{
		{"absent: gpt2's, cross-attention included", head, []string{"h.0.mlp.c_fc.weight", "h.0.crossattention.q_attn.weight"}},
		{"empty: none", head + "transposed: []\n", nil},
		{"bare suffix", head + "transposed: [mlp.c_fc.weight]\n", []string{"h.0.mlp.c_fc.weight"}},
	}
	names := []string{"h.0.mlp.c_fc.weight", "h.0.crossattention.q_attn.weight", "h.0.mlp.c_fc.bias", "wte.weight"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := mustParseAt(t, c.yaml, root)
			patterns := merge.TransposedPatterns(cfg.Transposed, checkpoint.ModelType(filepath.Join(root, "base")))
			var got []string
			for _, n := range names {
				shape := []int{4, 8}
				if n == "h.0.mlp.c_fc.bias" {
					shape = []int{8}
				}
				if merge.IsTransposed(n, shape, patterns) {
					got = append(got, n)
				}
			}
			if len(got) != len(c.want) {
				t.Fatalf("flagged %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("flagged %v, want %v", got, c.want)
				}
			}
		})
	}
}
