package merge

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func TestSpecTableMatchesRegistry(t *testing.T) {
	for _, m := range Methods() {
		s, ok := Spec(m)
		if !ok {
			t.Errorf("method %s has no row in the spec table", m)
			continue
		}
		for _, p := range s.Params {
			if _, ok := Param(p); !ok {
				t.Errorf("%s reads undeclared parameter %q", m, p)
			}
		}
		if s.Doc == "" {
			t.Errorf("%s has no doc", m)
		}
		// The row says it reads density exactly when its kernel uses it
		// (PCB checks its own: its sparsifier keeps everything; neuro's
		// density is 1 − mask_rate).
		k := registry[m]
		if uses := k.Sparsify.usesDensity() && k.density == nil || m == "pcb"; uses != s.Reads("density") {
			t.Errorf("%s: the kernel uses density: %v, the row reads it: %v", m, uses, s.Reads("density"))
		}
	}
	for name := range methodSpecs {
		if _, ok := registry[name]; !ok {
			t.Errorf("row %s has no kernel", name)
		}
	}
	for _, name := range ParamNames() {
		p, _ := Param(name)
		if p.Doc == "" || p.get == nil || p.set == nil {
			t.Errorf("parameter %s lacks a doc or accessors", name)
		}
		if len(Owners(name)) == 0 && !slices.Contains(Common, name) {
			t.Errorf("parameter %s is read by no method", name)
		}
	}
}

// TestDefaultsAreTheDeclaredOnes: a method's defaults are its row's and
// the parameters' declared defaults, with npsfuse's density for Go callers.
func TestDefaultsAreTheDeclaredOnes(t *testing.T) {
	p := DefaultParams("ties")
	if p.Density != 0.2 || p.Lambda != 1 || !p.Normalize || p.Scope != ScopeTensor || p.Gamma != 0.01 ||
		p.Epsilon != 0.15 || p.T != 0.5 || p.K != 2 || p.TallLambda != 0.4 || p.MaskRate != 0.5 ||
		p.Lam2 != 0 || p.FisherFloor != 1e-6 || p.Alpha != 0.9 || p.CommonSpaceFraction != 0.8 || p.Weights != nil {
		t.Fatalf("DefaultParams(ties) = %+v", p)
	}
	if n := DefaultParams("neuro"); n.Scope != ScopeGlobal || n.Normalize {
		t.Fatalf("neuro: scope %v normalize %v", n.Scope, n.Normalize)
	}
	// A config's density default is mergekit's 1.
	if r, bad := Resolve("ties", 2, Values{}); len(bad) > 0 || r.Density != 1 {
		t.Fatalf("Resolve(ties) density %v, %v", r.Density, bad)
	}
}

func TestResolve(t *testing.T) {
	cases := []struct {
		name    string
		method  string
		models  int
		v       Values
		want    func(p Params) bool
		problem string // a substring of the formatted problems; "" = none
	}{
		{"globals", "ties", 2, Values{Global: map[string]any{"density": 0.5, "lambda": 2, "normalize": false, "scope": "global"}},
			func(p Params) bool {
				return p.Density == 0.5 && p.Lambda == 2 && !p.Normalize && p.Scope == ScopeGlobal
			}, ""},
		{"per-model density, global fills the rest", "ties", 3, Values{Global: map[string]any{"density": 0.4},
			Models: []map[string]any{{"density": 0.1}, nil, {"density": 0.9, "weight": 2}}},
			func(p Params) bool {
				return slices.Equal(p.Densities, []float64{0.1, 0.4, 0.9}) && p.Density == 0.4 &&
					slices.Equal(p.Weights, []float32{1, 1, 2})
			}, ""},
		{"global weight is every model's", "task_arithmetic", 2, Values{Global: map[string]any{"weight": 0.5}},
			func(p Params) bool { return slices.Equal(p.Weights, []float32{0.5, 0.5}) }, ""},
		{"tall_lambda per model", "consensus_ta", 2, Values{Models: []map[string]any{{"tall_lambda": 0.1}, {"tall_lambda": 0.3}}},
			func(p Params) bool { return slices.Equal(p.TallLambdas, []float64{0.1, 0.3}) }, ""},
		{"null lam2 is automatic", "neuro", 2, Values{Global: map[string]any{"lam2": nil, "mask_rate": 0.9}},
			func(p Params) bool { return p.Lam2 == 0 && p.MaskRate == 0.9 }, ""},
		{"ignored common parameter refused", "slerp", 2, Values{Global: map[string]any{"density": 5.0, "t": 0.25}}, nil,
			"density is not used by slerp (its parameters: t)"},
		{"ignored run option accepted", "slerp", 2, Values{Global: map[string]any{"seed": 5, "scope": "global", "t": 0.25}},
			func(p Params) bool { return p.T == 0.25 }, ""},
		{"weight with slerp refused", "slerp", 2, Values{Models: []map[string]any{{"weight": 1.0}}}, nil,
			"weight of model 0 is not used by slerp"},
		{"lambda with model_stock refused", "model_stock", 2, Values{Global: map[string]any{"lambda": 2.0}}, nil,
			"lambda is not used by model_stock"},
		{"typo gets did you mean", "ties", 2, Values{Global: map[string]any{"densty": 0.5}}, nil,
			"densty is not a parameter of ties (its own parameters: rescale) (did you mean density?)"},
		{"typo of a Python name", "task_arithmetic", 2, Values{Global: map[string]any{"lamda": 0.5}}, nil,
			"(did you mean lambda? In Python: lam=)"},
		{"unknown method", "nope", 2, Values{}, nil, `unknown merge method "nope"`},
		{"foreign parameter names its owners", "ties", 2, Values{Global: map[string]any{"gamma": 0.1}}, nil,
			"gamma is not a parameter of ties (it belongs to breadcrumbs, breadcrumbs_ties)"},
		{"unknown parameter lists the method's own", "neuro", 2, Values{Global: map[string]any{"foo": 1}}, nil,
			"foo is not a parameter of neuro (its own parameters: mask_rate, lam1, lam2)"},
		{"range", "breadcrumbs", 2, Values{Global: map[string]any{"gamma": 1.0}}, nil, "gamma must lie in [0, 1), got 1"},
		{"per-model range names the model", "ties", 2, Values{Models: []map[string]any{nil, {"density": 0.0}}}, nil,
			"density of model 1 must lie in (0, 1], got 0"},
		{"global-only parameter per model", "ties", 2, Values{Models: []map[string]any{{"lambda": 2}}}, nil,
			"lambda of model 0 takes one value for all models"},
		{"type", "ties", 2, Values{Global: map[string]any{"normalize": "yes"}}, nil, "normalize must be true or false, got yes"},
		{"choice", "ties", 2, Values{Global: map[string]any{"scope": "layer"}}, nil, `scope must be one of "tensor", "global", got layer`},
		{"whole number", "consensus_ta", 2, Values{Global: map[string]any{"k": 1.5}}, nil, "k must be a whole number, got 1.5"},
		{"negative seed", "dare_ties", 2, Values{Global: map[string]any{"seed": -1}}, nil, "seed must be ≥ 0, got -1"},
		{"NaN", "task_arithmetic", 2, Values{Global: map[string]any{"lambda": math.NaN()}}, nil, "lambda must be a finite number, got NaN"},
		{"gradient point out of range", "ties", 2, Values{Global: map[string]any{"density": []any{0.1, 1.2}}}, nil, "density must lie in (0, 1], got 1.2"},
		{"gradient of a whole number", "consensus_ta", 2, Values{Global: map[string]any{"k": []any{1, 2}}}, nil, "k must be a number, got [1 2] (gradients and filter lists are taken by numeric and true/false parameters only)"},
		{"filter without value", "ties", 2, Values{Global: map[string]any{"density": []any{map[string]any{"filter": "mlp"}}}}, nil, "density condition 0 has no value"},
		{"gradient with global scope", "ties", 2, Values{Global: map[string]any{"density": []any{0.1, 0.2}, "scope": "global"}}, nil, "density varies by tensor (a gradient or filter list), which ties cannot take: scope: global"},
		{"gradient with automatic lam2", "neuro", 2, Values{Global: map[string]any{"lambda": []any{0.5, 1.0}, "scope": "tensor"}}, nil, "lambda varies by tensor (a gradient or filter list), which neuro cannot take: it measures the whole model"},
		{"rescale not for pcb", "pcb", 2, Values{Global: map[string]any{"rescale": true}}, nil, "rescale is not a parameter of pcb"},
		{"null not allowed", "ties", 2, Values{Global: map[string]any{"density": nil}}, nil, "density must be given a value"},
		{"model count", "slerp", 3, Values{}, nil, "slerp merges exactly 2 models, got 3"},
		{"too few", "model_stock", 1, Values{}, nil, "model_stock needs at least 2 fine-tuned models, got 1"},
		{"too many per-model entries", "ties", 1, Values{Models: []map[string]any{nil, nil}}, nil, "parameters given for 2 models, but there are 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, bad := Resolve(c.method, c.models, c.v)
			msgs := strings.Join(Format(bad, NameWhere), "\n")
			if c.problem == "" {
				if len(bad) > 0 {
					t.Fatalf("problems: %s", msgs)
				}
				if !c.want(p) {
					t.Fatalf("got %+v", p)
				}
				if again := Check(c.method, &p, c.models); len(again) > 0 {
					t.Fatalf("Resolve's Params fail Check: %v", again)
				}
				return
			}
			if !strings.Contains(msgs, c.problem) {
				t.Fatalf("problems %q do not contain %q", msgs, c.problem)
			}
			if strings.Count(msgs, c.problem) != 1 {
				t.Fatalf("problem reported twice: %q", msgs)
			}
		})
	}
}

// TestResolveReportsEveryProblem: all problems at once, located by the
// door's naming.
func TestResolveReportsEveryProblem(t *testing.T) {
	_, bad := Resolve("della", 2, Values{Global: map[string]any{"epsilon": -1, "gamma": 0.1},
		Models: []map[string]any{{"density": 2}}})
	got := Format(bad, PythonWhere)
	want := []string{
		"density of model 0 must lie in (0, 1], got 2",
		"epsilon must be ≥ 0, got -1",
		"gamma is not a parameter of della (it belongs to breadcrumbs, breadcrumbs_ties)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if w := PythonWhere("lambda", -1); w != "lam" {
		t.Fatalf("PythonWhere(lambda) = %q", w)
	}
}
