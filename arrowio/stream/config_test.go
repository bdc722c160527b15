package stream

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/merge"
)

// configRoot makes a folder holding (empty) folders base, ft0 and ft1, the
// paths the configs below name relative to it.
func configRoot(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"base", "ft0", "ft1"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// problemCount is the number of listed problems in a config error.
func problemCount(err error) int { return strings.Count(err.Error(), "\n  - ") }

// good is a valid ties config; the bad cases below change one thing.
const good = `merge_method: ties
base_model: base
models:
  - model: ft0
    parameters: {weight: 0.5, density: 0.5}
  - model: ft1
    parameters: {weight: 0.3}
parameters: {normalize: true, density: 0.7}
dtype: bfloat16
`

type badConfig struct {
	name string
	text string
	want []string // substrings, one per problem
}

// badConfigs has one config per problem class the parser reports.
func badConfigs() []badConfig {
	models := "models:\n  - model: ft0\n  - model: ft1\n"
	head := "merge_method: ties\nbase_model: base\n"
	return append([]badConfig{
		{"invalid YAML", "merge_method: [ties\n", []string{"not valid YAML"}},
		{"not a mapping", "- ties\n- base\n", []string{"must be a mapping with merge_method"}},
		{"mergekit-moe config", "base_model: base\nexperts:\n  - source_model: ft0\n", []string{"mergekit-moe config", "npsfuse moe"}},
		{"mergekit-evolve config", "genome:\n  models: [ft0]\ntasks: []\n", []string{"mergekit-evolve config", "npsfuse search"}},
		{"several documents", good + "---\n" + good, []string{"more than one YAML document", "npsfuse multi"}},
		{"unknown top-level key", good + "modules: {}\n", []string{`unknown key "modules"`}},
		{"merge_method missing", "base_model: base\n" + models, []string{"merge_method is missing"}},
		{"unknown merge_method", "merge_method: frankenmerge\nbase_model: base\n" + models, []string{`unknown merge_method "frankenmerge"`}},
		{"merge_method not a string", "merge_method: [ties]\nbase_model: base\n" + models, []string{"merge_method must be a string"}},
		{"base_model missing", "merge_method: ties\n" + models, []string{"base_model is missing"}},
		{"base_model does not exist", "merge_method: ties\nbase_model: nowhere\n" + models, []string{"base_model ", "nowhere does not exist"}},
		{"parameters not a mapping", head + models + "parameters: [1]\n", []string{"parameters must be a mapping"}},
		{"unknown global parameter", head + models + "parameters: {epsilon: 0.1}\n", []string{"parameters.epsilon is not a parameter of ties (it belongs to della, della_linear, ram)"}},
		{"global density zero", head + models + "parameters: {density: 0}\n", []string{"parameters.density must lie in (0, 1], got 0"}},
		{"global density above one", head + models + "parameters: {density: 1.5}\n", []string{"parameters.density must lie in (0, 1], got 1.5"}},
		{"per-model density negative", head + "models:\n  - model: ft0\n    parameters: {density: -0.1}\n",
			[]string{"models[0].parameters.density must lie in (0, 1], got -0.1"}},
		{"weight not a number", head + "models:\n  - model: ft0\n    parameters: {weight: heavy}\n",
			[]string{"models[0].parameters.weight must be a number, got heavy"}},
		{"weight NaN", head + "models:\n  - model: ft0\n    parameters: {weight: .nan}\n", []string{"models[0].parameters.weight must be a finite number, got NaN"}},
		{"lambda infinite", head + models + "parameters: {lambda: .inf}\n", []string{"parameters.lambda must be a finite number, got +Inf"}},
		{"gradient point a list", head + "models:\n  - model: ft0\n    parameters: {weight: [[0.1], 0.9]}\n",
			[]string{"models[0].parameters.weight gradient point 0 must be a number, got [0.1]"}},
		{"gradient point out of range", head + models + "parameters: {density: [0.5, 1.5]}\n",
			[]string{"parameters.density must lie in (0, 1], got 1.5"}},
		{"condition without value", head + models + "parameters: {density: [{filter: mlp}]}\n",
			[]string{"parameters.density condition 0 has no value"}},
		{"condition unknown key", head + models + "parameters: {density: [{filter: mlp, values: 0.3}]}\n",
			[]string{`parameters.density condition 0: unknown key "values"`}},
		{"gradient with global scope", head + models + "parameters: {density: [0.2, 0.8]}\nscope: global\n",
			[]string{"parameters.density varies by tensor (a gradient or filter list), which ties cannot take: scope: global"}},
		{"gradient of the seed", strings.Replace(head, "ties", "dare_ties", 1) + models + "seed: [1, 2]\n",
			[]string{"seed must be a number, got [1 2] (gradients and filter lists are taken by numeric and true/false parameters only)"}},
		{"unknown method without base", "merge_method: frankenmerge\n" + models, []string{`unknown merge_method "frankenmerge"`}},
		{"two documents", good + "---\n" + good, []string{"more than one YAML document"}},
		{"normalize not a bool", head + models + "parameters: {normalize: 1}\n", []string{"parameters.normalize must be true or false, got 1"}},
		{"rescale not a bool", head + models + "parameters: {rescale: 1}\n", []string{"parameters.rescale must be true or false, got 1"}},
		{"models missing", head, []string{"models must be a non-empty list"}},
		{"models empty", head + "models: []\n", []string{"models must be a non-empty list"}},
		{"model entry not a mapping", head + "models: [ft0]\n", []string{"models[0] must be a mapping with a model key"}},
		{"model path not a string", head + "models:\n  - model: [ft0]\n", []string{"models[0].model must be a string, got [ft0]"}},
		{"base_model not a string", "merge_method: ties\nbase_model: 3\n" + models, []string{"base_model must be a string, got 3"}},
		{"model path empty", head + "models:\n  - model: ''\n", []string{"models[0]: model is missing"}},
		{"merge_method empty", "merge_method: ''\nbase_model: base\n" + models, []string{"merge_method is missing"}},
		{"model key missing", head + "models:\n  - parameters: {weight: 1}\n", []string{"models[0]: model is missing"}},
		{"model does not exist", head + "models:\n  - model: ft0\n  - model: ft9\n", []string{"models[1]: model ", "ft9 does not exist"}},
		{"unknown model key", head + "models:\n  - model: ft0\n    weight: 1\n", []string{`models[0]: unknown key "weight"`}},
		{"unknown per-model parameter", head + "models:\n  - model: ft0\n    parameters: {gamma: 0.1}\n", []string{"models[0].parameters.gamma is not a parameter of ties (it belongs to breadcrumbs, breadcrumbs_ties)"}},
		{"model parameters not a mapping", head + "models:\n  - model: ft0\n    parameters: 3\n", []string{"models[0].parameters must be a mapping"}},
		{"only the base model", head + "models:\n  - model: base\n", []string{"models lists only the base model"}},
		{"unknown dtype", good + "out_dtype: float8\n", []string{`out_dtype: unknown dtype "float8"`}},
		{"unknown compute dtype", strings.Replace(good, "bfloat16", "int4", 1), []string{`dtype: unknown dtype "int4"`}},
		{"tokenizer_source union", good + "tokenizer_source: union\n", []string{"run this config with `npsfuse merge`"}},
		{"unknown scope", good + "scope: layer\n", []string{`scope must be one of "tensor", "global", got layer`}},
		{"negative seed", good + "seed: -1\n", []string{"seed must be ≥ 0, got -1"}},
		{"fractional seed", good + "seed: 1.5\n", []string{"seed must be a whole number, got 1.5"}},
		{"seed not a number", good + "seed: abc\n", []string{"seed must be a number, got abc"}},
		{"lambda unused by linear", "merge_method: linear\nmodels:\n  - model: ft0\n  - model: ft1\nparameters: {lambda: 2}\n", []string{"parameters.lambda is not used by linear (its parameters: weight, normalize)"}},
		{"weight unused by slerp", "merge_method: slerp\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {weight: 1}\n  - model: ft1\nparameters: {t: 0.5}\n",
			[]string{"models[0].parameters.weight is not used by slerp"}},
		{"typo gets did you mean", strings.Replace(good, "normalize: true", "densty: 0.5", 1), []string{"densty is not a parameter of ties", "(did you mean density?)"}},
		{"transposed not a list", good + "transposed: '*.w'\n", []string{"transposed must be a list"}},
		{"transposed bad pattern", good + "transposed: ['[a']\n", []string{`transposed: bad pattern "[a"`}},
		{"transposed not strings", good + "transposed: [3]\n", []string{"transposed: 3 is not a string"}},
	}, badSliceConfigs()...)
}

func TestParseConfigProblems(t *testing.T) {
	root := configRoot(t)
	if _, err := ParseConfig([]byte(good), root); err != nil {
		t.Fatalf("the good config is refused: %v", err)
	}
	for _, c := range badConfigs() {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(c.text), root)
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("error %q does not wrap ErrConfig", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// Syntax errors are one line; listed problems are one each.
			if n := problemCount(err); n > 1 {
				t.Errorf("%d problems listed, want 1:\n%v", n, err)
			}
		})
	}
}

// Every problem of a config is listed in one error, sorted.
func TestParseConfigListsAllProblems(t *testing.T) {
	root := configRoot(t)
	text := `merge_method: frankenmerge
base_model: base
models:
  - model: ft0
    parameters: {density: 1.5}
  - model: missing-model
  - model: ft1
    parameters: {weight: .nan, gamma: 2}
parameters: {lambda: 0.5, epsilon: 0.1}
dtype: float8
scope: layer
modules: {}
`
	// The parameters are checked against the method's row of the spec
	// table: with an unknown method, they are not checked (no knock-on
	// errors); with a known one, every bad value is listed too.
	want := []string{
		`unknown merge_method "frankenmerge"`,
		"models[1]: model " + filepath.Join(root, "missing-model") + " does not exist",
		`dtype: unknown dtype "float8"`,
		`unknown key "modules"`,
	}
	if _, err := ParseConfig([]byte(strings.Replace(text, "frankenmerge", "ties", 1)), root); err == nil {
		t.Fatal("accepted with ties")
	} else {
		for _, w := range []string{
			"models[0].parameters.density must lie in (0, 1], got 1.5",
			"models[2].parameters.weight must be a finite number, got NaN",
			"models[2].parameters.gamma is not a parameter of ties",
			"parameters.epsilon is not a parameter of ties",
			`scope must be one of "tensor", "global", got layer`,
		} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("with ties, the error does not list %q:\n%v", w, err)
			}
		}
	}
	_, err := ParseConfig([]byte(text), root)
	if err == nil {
		t.Fatal("accepted")
	}
	if n := problemCount(err); n != len(want) {
		t.Errorf("%d problems listed, want %d:\n%v", n, len(want), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not list %q:\n%v", w, err)
		}
	}
	lines := strings.Split(err.Error(), "\n  - ")[1:]
	if !slices.IsSorted(lines) {
		t.Errorf("problems are not sorted:\n%v", err)
	}
}

func TestParseConfigValues(t *testing.T) {
	root := configRoot(t)
	base := filepath.Join(root, "base")
	ft0, ft1 := filepath.Join(root, "ft0"), filepath.Join(root, "ft1")
	cases := []struct {
		name      string
		text      string
		method    string
		baseModel string
		paths     []string
		params    merge.Params
		dtype     string
		outDType  string
		notes     []string // substrings, one per expected note
	}{
		{
			// mergekit's README example for ties, verbatim but for the paths.
			name: "mergekit ties example",
			text: `models:
  - model: base
    # no parameters necessary for base model
  - model: ft0
    parameters:
      density: 0.5
      weight: 0.5
  - model: ft1
    parameters:
      density: 0.5
      weight: 0.3
merge_method: ties
base_model: base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
`,
			method: "ties", baseModel: base, paths: []string{ft0, ft1},
			params: merge.Params{Weights: []float32{0.5, 0.3}, Density: 1, Densities: []float64{0.5, 0.5}, Lambda: 1, Normalize: true},
			dtype:  "float16",
			notes:  []string{"int8_mask is accepted and ignored", "models[0] is the base model"},
		},
		{
			name:   "task_arithmetic defaults",
			text:   "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft0\n  - model: ft1\n    parameters: {weight: -0.5}\nparameters: {lambda: 0.7}\n",
			method: "task_arithmetic", baseModel: base, paths: []string{ft0, ft1},
			params: merge.Params{Weights: []float32{1, -0.5}, Density: 1, Lambda: 0.7, Normalize: false},
		},
		{
			name:   "global weight and density, one per-model density",
			text:   "merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {density: 0.8}\n  - model: ft1\nparameters: {weight: 0.25, density: 0.4, normalize: true}\nseed: 42\nscope: global\nout_dtype: bf16\n",
			method: "dare_ties", baseModel: base, paths: []string{ft0, ft1},
			params:   merge.Params{Weights: []float32{0.25, 0.25}, Density: 0.4, Densities: []float64{0.8, 0.4}, Lambda: 1, Normalize: true, Scope: merge.ScopeGlobal, Seed: 42},
			outDType: "bf16",
		},
		{
			name:   "linear without base",
			text:   "merge_method: linear\nmodels:\n  - model: ft0\n    parameters: {weight: 2}\n  - model: ft1\n    parameters: {weight: 1}\n",
			method: "linear", paths: []string{ft0, ft1},
			params: merge.Params{Weights: []float32{2, 1}, Density: 1, Lambda: 1, Normalize: true},
		},
		{
			name:   "linear keeps the base among the models",
			text:   "merge_method: linear\nbase_model: base\nmodels:\n  - model: base\n  - model: ft1\nparameters: {normalize: false}\n",
			method: "linear", baseModel: base, paths: []string{base, ft1},
			params: merge.Params{Weights: []float32{1, 1}, Density: 1, Lambda: 1, Normalize: false},
		},
		{
			name:   "base spelled differently is still the base",
			text:   "merge_method: ties\nbase_model: " + root + "/./base\nmodels:\n  - model: " + base + "/\n  - model: ft0\n",
			method: "ties", baseModel: base, paths: []string{ft0},
			params: merge.Params{Weights: []float32{1}, Density: 1, Lambda: 1, Normalize: true},
			notes:  []string{"models[0] is the base model"},
		},
		{
			name:   "JSON text, absolute paths",
			text:   `{"merge_method": "magnitude_prune", "base_model": "` + base + `", "models": [{"model": "` + ft1 + `", "parameters": {"density": 0.1}}], "seed": 7}`,
			method: "magnitude_prune", baseModel: base, paths: []string{ft1},
			params: merge.Params{Weights: []float32{1}, Density: 1, Densities: []float64{0.1}, Lambda: 1, Normalize: false, Seed: 7},
		},
		{
			name:   "transposed patterns and tokenizer_source base",
			text:   good + "transposed: ['*c_attn.weight']\ntokenizer_source: base\n",
			method: "ties", baseModel: base, paths: []string{ft0, ft1},
			params: merge.Params{Weights: []float32{0.5, 0.3}, Density: 0.7, Densities: []float64{0.5, 0.7}, Lambda: 1, Normalize: true},
			dtype:  "bfloat16",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(c.text), root)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Method != c.method || filepath.Clean(cfg.BaseModel) != filepath.Clean(c.baseModel) && c.baseModel != "" || (c.baseModel == "" && cfg.BaseModel != "") {
				t.Errorf("method %q base %q, want %q %q", cfg.Method, cfg.BaseModel, c.method, c.baseModel)
			}
			var paths []string
			for _, m := range cfg.Models {
				paths = append(paths, filepath.Clean(m.Path))
			}
			if !slices.Equal(paths, c.paths) {
				t.Errorf("models %q, want %q", paths, c.paths)
			}
			p := cfg.Params()
			if !slices.Equal(p.Weights, c.params.Weights) || !slices.Equal(p.Densities, c.params.Densities) ||
				p.Density != c.params.Density || p.Lambda != c.params.Lambda || p.Normalize != c.params.Normalize ||
				p.Scope != c.params.Scope || p.Seed != c.params.Seed {
				t.Errorf("params %+v, want %+v", p, c.params)
			}
			if cfg.DType != c.dtype || cfg.OutDType != c.outDType {
				t.Errorf("dtype %q out_dtype %q, want %q %q", cfg.DType, cfg.OutDType, c.dtype, c.outDType)
			}
			if len(cfg.Notes) != len(c.notes) {
				t.Errorf("notes %q, want %d", cfg.Notes, len(c.notes))
			}
			for _, n := range c.notes {
				if !slices.ContainsFunc(cfg.Notes, func(s string) bool { return strings.Contains(s, n) }) {
					t.Errorf("no note contains %q: %q", n, cfg.Notes)
				}
			}
		})
	}
}

// mergekit's default for normalize, per method (its registry of
// GeneralizedTaskArithmeticMerge and linear), unless the config says.
func TestDefaultNormalize(t *testing.T) {
	root := configRoot(t)
	want := map[string]bool{"linear": true, "task_arithmetic": false, "ties": true,
		"dare_ties": false, "dare_linear": false, "magnitude_prune": false,
		"breadcrumbs": false, "breadcrumbs_ties": false, "della": true, "della_linear": false}
	for _, method := range merge.Methods() {
		w, ok := want[method]
		if !ok {
			t.Logf("method %q: mergekit has no normalize default to compare with", method)
			continue
		}
		text := "merge_method: " + method + "\nbase_model: base\nmodels:\n  - model: ft0\n"
		if got := mustParseAt(t, text, root).Params().Normalize; got != w {
			t.Errorf("%s: default normalize %v, want %v", method, got, w)
		}
		for _, set := range []bool{false, true} {
			s := "false"
			if set {
				s = "true"
			}
			if got := mustParseAt(t, text+"parameters: {normalize: "+s+"}\n", root).Params().Normalize; got != set {
				t.Errorf("%s: normalize %v given, Params has %v", method, set, got)
			}
		}
	}
}

func mustParseAt(t testing.TB, text, root string) *Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(text), root)
	if err != nil {
		t.Fatalf("%s: %v", text, err)
	}
	return cfg
}

// FuzzParseConfig checks that ParseConfig never panics, fails only with
// ErrConfig, and that an accepted config yields consistent parameters.
func FuzzParseConfig(f *testing.F) {
	f.Add(good)
	for _, c := range badConfigs() {
		f.Add(c.text)
	}
	f.Add(`{"merge_method": "linear", "models": [{"model": "ft0"}, {"model": "ft1"}]}`)
	f.Add("merge_method: dare_linear\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {density: 1e-9}\nseed: 9007199254740992\n")
	f.Add("&a [*a]")
	for _, s := range goodSliceConfigs {
		f.Add(s)
	}
	root := configRoot(f)
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := ParseConfig([]byte(text), root)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %q does not wrap ErrConfig", err)
			}
			return
		}
		if _, ok := merge.Lookup(cfg.Method); !ok {
			t.Fatalf("accepted unknown method %q", cfg.Method)
		}
		if len(cfg.Slices) > 0 {
			checkSlices(t, cfg)
			return
		}
		if len(cfg.Models) == 0 {
			t.Fatal("accepted a config with no models to merge")
		}
		p := cfg.Params()
		if len(p.Weights) != len(cfg.Models) || (p.Densities != nil && len(p.Densities) != len(cfg.Models)) {
			t.Fatalf("params %+v for %d models", p, len(cfg.Models))
		}
		for _, d := range append([]float64{p.Density}, p.Densities...) {
			if !(d > 0 && d <= 1) {
				t.Fatalf("accepted density %v", d)
			}
		}
		if cfg.BaseModel == "" && cfg.Method != "linear" && cfg.Method != "passthrough" {
			t.Fatalf("accepted %s without a base model", cfg.Method)
		}
	})
}

func TestConfigMethodParameters(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"base", "a", "b"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	yml := "merge_method: breadcrumbs_ties\nbase_model: base\nmodels:\n  - model: a\n  - model: b\nparameters:\n  density: 0.5\n  gamma: 0.05\n"
	c, err := ParseConfig([]byte(yml), dir)
	if err != nil {
		t.Fatal(err)
	}
	p := c.Params()
	if p.Gamma != 0.05 || p.Density != 0.5 || p.Epsilon != merge.DefaultParams("della").Epsilon {
		t.Fatalf("params %+v", p)
	}
	c, err = ParseConfig([]byte("merge_method: neuro\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  mask_rate: 0.8\n  lam1: 0.5\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Params(); p.MaskRate != 0.8 || p.Lam1 != 0.5 || p.Scope != merge.ScopeGlobal {
		t.Fatalf("neuro params %+v", p)
	}
}

// mergekit's forms: slerp with the base among its two models (the base
// first), linear with a base it averages in, gradients and filter lists
// evaluated per tensor with mergekit's precedence, rescale false.
func TestParseConfigMergekitForms(t *testing.T) {
	root := configRoot(t)
	parse := func(text string) *Config {
		t.Helper()
		c, err := ParseConfig([]byte(text), root)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := parse("merge_method: slerp\nbase_model: ft1\nmodels:\n  - model: ft0\n  - model: ft1\nparameters: {t: [0, 1]}\n")
	if len(c.Models) != 2 || filepath.Base(c.Models[0].Path) != "ft1" || filepath.Base(c.Models[1].Path) != "ft0" {
		t.Fatalf("slerp models %+v, want the base first", c.Models)
	}
	p := c.Params()
	names := []string{"model.embed_tokens.weight", "model.layers.0.mlp.w", "model.layers.2.mlp.w", "model.layers.4.mlp.w"}
	pos := merge.LayerPositions(names)
	for i, want := range []float64{0, 0, 0.5, 1} {
		if got := p.ForTensor(names[i], pos[i]).T; got != want {
			t.Errorf("%s: t %v, want %v", names[i], got, want)
		}
	}
	c = parse("merge_method: linear\nbase_model: base\nmodels:\n  - model: ft0\n  - model: ft1\nparameters: {weight: 0.5}\n")
	if len(c.Models) != 3 || filepath.Base(c.Models[2].Path) != "base" {
		t.Fatalf("linear models %+v, want the base last", c.Models)
	}
	if w := c.Params().Weights; !slices.Equal(w, []float32{0.5, 0.5, 0.5}) {
		t.Fatalf("linear weights %v", w)
	}
	c = parse(`merge_method: ties
base_model: base
models:
  - model: ft0
    parameters: {weight: [{filter: mlp, value: 2}]}
  - model: ft1
    parameters: {weight: 3}
parameters: {weight: [0, 1], density: [{filter: attn, value: 0.2}, {value: 0.6}], rescale: false}
`)
	p = c.Params()
	if p.Rescale {
		t.Error("rescale: false ignored")
	}
	for _, tc := range []struct {
		name    string
		t       float64
		weights []float32
		density []float64
	}{
		{"m.layers.1.mlp.w", 0.25, []float32{2, 3}, []float64{0.6, 0.6}},
		{"m.layers.1.attn.w", 0.25, []float32{0.25, 3}, []float64{0.2, 0.2}},
	} {
		q := p.ForTensor(tc.name, tc.t)
		if !slices.Equal(q.Weights, tc.weights) || !slices.Equal(q.Densities, tc.density) {
			t.Errorf("%s: weights %v densities %v, want %v %v", tc.name, q.Weights, q.Densities, tc.weights, tc.density)
		}
	}
}
