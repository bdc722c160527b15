package merge

import (
	"fmt"
	"path/filepath"
	"slices"
)

// Layout rules shared by every door: which 2-D weights are stored (in, out)
// instead of (out, in). The per-neuron methods (neuro, della, della_linear)
// and the subspace merges read a transposed tensor transposed back.

// TransposedByModelType are the weights each architecture stores (in, out),
// by config.json's model_type: GPT-2's Conv1D layers, cross-attention
// included.
var TransposedByModelType = map[string][]string{
	"gpt2": {
		"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
		"crossattention.c_attn.weight", "crossattention.q_attn.weight",
		"crossattention.c_proj.weight",
	},
}

// CheckPattern reports a malformed transposed pattern.
func CheckPattern(pattern string) error {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return fmt.Errorf("bad pattern %q: %w", pattern, err)
	}
	return nil
}

// MatchTransposed reports whether tensor name matches a transposed pattern:
// a shell-style glob (filepath.Match syntax: *, ?, [a-z], [^a]) matched
// against the whole name or against any dot-separated suffix of it, so
// "mlp.c_fc.weight" matches "transformer.h.3.mlp.c_fc.weight", as does
// "h.*.mlp.c_fc.weight". A malformed pattern matches nothing (CheckPattern
// reports it).
func MatchTransposed(name, pattern string) bool {
	if ok, _ := filepath.Match(pattern, name); ok {
		return true
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if ok, _ := filepath.Match(pattern, name[i+1:]); ok {
				return true
			}
		}
	}
	return false
}

// TransposedPatterns are the patterns a merge uses: the given ones when
// given (explicit is non-nil, possibly empty), else the model type's.
func TransposedPatterns(explicit []string, modelType string) []string {
	if explicit != nil {
		return explicit
	}
	return slices.Clone(TransposedByModelType[modelType])
}

// IsTransposed reports whether a tensor of the given shape is a transposed
// weight under patterns: a 2-D tensor whose name matches one of them.
func IsTransposed(name string, shape []int, patterns []string) bool {
	if len(shape) != 2 {
		return false
	}
	for _, p := range patterns {
		if MatchTransposed(name, p) {
			return true
		}
	}
	return false
}
