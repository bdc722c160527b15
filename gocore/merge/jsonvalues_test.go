package merge

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestResolveReadsPythonJSON: the values Python's door sends (json.Number,
// and "nan"/"inf" strings for the non-finite floats JSON cannot carry) are
// read by Resolve itself, exactly, with the messages YAML's values get.
func TestResolveReadsPythonJSON(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		v            Values
		check        func(Params) bool
		problem      string
	}{
		{"whole number", "dare_ties", Values{Global: map[string]any{"seed": json.Number("7"), "density": json.Number("0.25")}},
			func(p Params) bool { return p.Seed == 7 && p.Density == 0.25 }, ""},
		{"seed above 2^63 kept exactly", "dare_ties", Values{Global: map[string]any{"seed": json.Number("18446744073709551615")}},
			func(p Params) bool { return p.Seed == 18446744073709551615 }, ""},
		{"per-model numbers", "task_arithmetic", Values{Models: []map[string]any{{"weight": json.Number("0.5")}, {"weight": json.Number("2")}}},
			func(p Params) bool { return p.Weights[0] == 0.5 && p.Weights[1] == 2 }, ""},
		{"nan string", "task_arithmetic", Values{Global: map[string]any{"lambda": "nan"}}, nil, "lambda must be a finite number, got NaN"},
		{"-inf string per model", "task_arithmetic", Values{Models: []map[string]any{nil, {"weight": "-inf"}}}, nil,
			"weight of model 1 must be a finite number, got -Inf"},
		{"other strings stay refused", "task_arithmetic", Values{Global: map[string]any{"lambda": "lots"}}, nil, "lambda must be a number, got lots"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, bad := Resolve(tc.method, 2, tc.v)
			got := strings.Join(Format(bad, NameWhere), "; ")
			if tc.problem == "" {
				if got != "" || !tc.check(p) {
					t.Errorf("problems %q, params %+v", got, p)
				}
				return
			}
			if !strings.Contains(got, tc.problem) {
				t.Errorf("problems %q, want %q", got, tc.problem)
			}
		})
	}
}
