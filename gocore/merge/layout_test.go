package merge

import "testing"

func TestMatchTransposed(t *testing.T) {
	cases := []struct {
		name, pattern string
		want          bool
	}{
		{"transformer.h.3.mlp.c_fc.weight", "mlp.c_fc.weight", true},
		{"transformer.h.3.mlp.c_fc.weight", "h.*.mlp.c_fc.weight", true},
		{"mlp.c_fc.weight", "mlp.c_fc.weight", true},
		{"transformer.h.3.mlp.c_fc.bias", "mlp.c_fc.weight", false},
		{"transformer.h.3.xmlp.c_fc.weight", "mlp.c_fc.weight", false},
		{"transformer.h.0.crossattention.c_attn.weight", "attn.c_attn.weight", false},
		{"transformer.h.0.crossattention.c_attn.weight", "crossattention.c_attn.weight", true},
		{"transformer.h.0.attn.c_attn.weight", "*attn.c_attn.weight", true},
		{"a.b.w", "[ab].w", true},
		{"a.b.w", "[^ab].w", false},
		{"a.b.w", "[", false},
	}
	for _, c := range cases {
		if got := MatchTransposed(c.name, c.pattern); got != c.want {
			t.Errorf("MatchTransposed(%q, %q) = %v, want %v", c.name, c.pattern, got, c.want)
		}
	}
	if CheckPattern("[") == nil || CheckPattern("h.*.w") != nil {
		t.Error("CheckPattern")
	}
}

func TestTransposedPatterns(t *testing.T) {
	gpt2 := TransposedPatterns(nil, "gpt2")
	if len(gpt2) != 7 {
		t.Fatalf("gpt2 patterns %v", gpt2)
	}
	if got := TransposedPatterns([]string{}, "gpt2"); len(got) != 0 {
		t.Fatalf("an explicit empty list must win, got %v", got)
	}
	if TransposedPatterns(nil, "llama") != nil {
		t.Fatal("llama has no transposed weights")
	}
	for _, c := range []struct {
		name  string
		shape []int
		want  bool
	}{
		{"transformer.h.0.mlp.c_fc.weight", []int{64, 256}, true},
		{"transformer.h.0.crossattention.q_attn.weight", []int{64, 64}, true},
		{"transformer.h.0.mlp.c_fc.bias", []int{256}, false},
		{"lm_head.weight", []int{500, 64}, false},
	} {
		if got := IsTransposed(c.name, c.shape, gpt2); got != c.want {
			t.Errorf("IsTransposed(%q) = %v", c.name, got)
		}
	}
}
