package merge

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The spec table: every merge method declares here, once, which
// parameters it reads, with their types, defaults, ranges and docs. The
// doors derive everything from it: Python's npsfuse.merge keywords and
// its early checks (read from the extension at import), the YAML schema
// of `npsfuse merge` and of the daemon's merge job (stream.ParseConfig),
// and docs/methods.md (cmd/npsfuse-spec). Resolve turns a door's raw
// values into Params, and Check (run by every merge) applies the same
// rules to Params built by hand, so a Go caller, Python, the CLI and the
// daemon accept and refuse exactly the same values with the same words.

// Kind is the type of a parameter's value.
type Kind string

const (
	// KindFloat is a finite number.
	KindFloat Kind = "float"
	// KindInt is a whole number.
	KindInt Kind = "int"
	// KindBool is true or false.
	KindBool Kind = "bool"
	// KindChoice is one of the parameter's Choices.
	KindChoice Kind = "choice"
	// KindData is per-model data the doors load themselves (statistics):
	// Resolve leaves it to them.
	KindData Kind = "data"
)

// PerModel says whether a parameter takes one value, or one per model.
type PerModel string

const (
	// Global parameters take one value for the whole merge.
	Global PerModel = "global"
	// Either parameters take one value, or one per model.
	Either PerModel = "either"
	// Each parameters take one value per model (the global value, when
	// given, is every model's).
	Each PerModel = "each"
)

// Range bounds a number: Min ≤ x ≤ Max, with strict ends where MinOpen or
// MaxOpen is set; a nil bound is unbounded.
type Range struct {
	Min     *float64 `json:"min,omitempty"`
	Max     *float64 `json:"max,omitempty"`
	MinOpen bool     `json:"min_open,omitempty"`
	MaxOpen bool     `json:"max_open,omitempty"`
}

// contains reports whether x lies in the range.
func (r Range) contains(x float64) bool {
	if r.Min != nil && (x < *r.Min || r.MinOpen && x == *r.Min) {
		return false
	}
	return r.Max == nil || !(x > *r.Max || r.MaxOpen && x == *r.Max)
}

// String writes the range as "(0, 1]", "[0, ∞)" or "> 0".
func (r Range) String() string {
	switch {
	case r.Min != nil && r.Max != nil:
		lo, hi := "[", "]"
		if r.MinOpen {
			lo = "("
		}
		if r.MaxOpen {
			hi = ")"
		}
		return fmt.Sprintf("%s%v, %v%s", lo, *r.Min, *r.Max, hi)
	case r.Min != nil && r.MinOpen:
		return fmt.Sprintf("> %v", *r.Min)
	case r.Min != nil:
		return fmt.Sprintf("≥ %v", *r.Min)
	case r.Max != nil:
		return fmt.Sprintf("≤ %v", *r.Max)
	}
	return "any finite number"
}

// describe is the phrase of a range check's message: "lie in [0, 1)",
// "be > 0".
func (r Range) describe() string {
	if r.Min != nil && r.Max != nil {
		return "lie in " + r.String()
	}
	return "be " + r.String()
}

func ptr(x float64) *float64 { return &x }

// in is the range [lo, hi]; the open flags follow.
func in(lo, hi float64, loOpen, hiOpen bool) *Range {
	return &Range{Min: ptr(lo), Max: ptr(hi), MinOpen: loOpen, MaxOpen: hiOpen}
}

// ParamSpec declares one parameter.
type ParamSpec struct {
	// Name is the parameter's key in YAML configs and job specs.
	Name string `json:"name"`
	// Python is npsfuse.merge's keyword for it when that differs from
	// Name (weights, lam).
	Python string `json:"python,omitempty"`
	// Kind is the type of its value.
	Kind Kind `json:"kind"`
	// PerModel says whether it takes one value or one per model.
	PerModel PerModel `json:"per_model"`
	// Default is its value when a config (YAML, a daemon job) does not give
	// it: mergekit's where mergekit has the parameter (nil: see Auto, or
	// per method).
	Default any `json:"default"`
	// PythonDefault is npsfuse.merge's keyword default where it differs
	// from Default (density: 0.2 in Python and Go's DefaultParams, 1 in a
	// config, as in mergekit).
	PythonDefault any `json:"python_default,omitempty"`
	// Auto says what an explicit null selects, for parameters where null
	// means "choose automatically"; empty when null is not allowed.
	Auto string `json:"auto,omitempty"`
	// Range bounds a number (nil: any finite number).
	Range *Range `json:"range,omitempty"`
	// Choices are the values of a KindChoice parameter.
	Choices []string `json:"choices,omitempty"`
	// Doc says what it does, in one sentence or two.
	Doc string `json:"doc"`

	// get returns the values to check in p (one per model for per-model
	// values, perModel set; none when p holds nothing to check), set
	// stores values into p.
	get func(p *Params) (vals []float64, perModel bool)
	set func(p *Params, v []float64, perModel bool)
}

// MethodSpec declares one method: the parameters it reads and its
// defaults where they depend on the method.
type MethodSpec struct {
	// Name is the method's name (merge_method).
	Name string `json:"name"`
	// Doc says what it computes, in one line.
	Doc string `json:"doc"`
	// Params are the names of the parameters it reads, common ones
	// included; of the common parameters it does not read, weight, density
	// and lambda are refused (unusedRefused), the others accepted and
	// ignored (as mergekit does).
	Params []string `json:"params"`
	// MinModels and MaxModels bound the number of fine-tuned models
	// (MaxModels 0: no bound).
	MinModels int `json:"min_models"`
	MaxModels int `json:"max_models,omitempty"`
	// Normalize is its default for normalize (mergekit's).
	Normalize bool `json:"normalize"`
	// Rescale is its default for rescale (mergekit's).
	Rescale bool `json:"rescale,omitempty"`
	// Scope is its default top-k scope.
	Scope string `json:"scope"`
	// DataAware methods need per-model statistics.
	DataAware bool `json:"data_aware,omitempty"`
	// Mergekit names methods mergekit has under the same name.
	Mergekit bool `json:"mergekit,omitempty"`
	// BaseAsModel methods, in a mergekit config, merge a base_model that
	// is not among the models as one more model, the last, with the
	// global parameters (mergekit's linear): stream.ParseConfig (the CLI
	// and the daemon) and npsfuse.merge (python/npsfuse/merging.py, which
	// reads the flag from MethodSpecs) apply it; npsfuse.merge accepts
	// base=None only for these methods.
	BaseAsModel bool `json:"base_as_model,omitempty"`
	// Overrides change a shared parameter's declaration for this method
	// (nearswap's t is a distance threshold, slerp's an interpolation
	// weight).
	Overrides map[string]Override `json:"overrides,omitempty"`
}

// Override is a method's own version of a shared parameter's declaration;
// its zero fields keep the shared ones.
type Override struct {
	// Default replaces the parameter's default (nil: keep it).
	Default any `json:"default,omitempty"`
	// Required parameters must be given (as in mergekit).
	Required bool `json:"required,omitempty"`
	// Range replaces the parameter's range (nil: keep it).
	Range *Range `json:"range,omitempty"`
	// Doc replaces the parameter's doc (empty: keep it).
	Doc string `json:"doc,omitempty"`
}

// rangeOf is parameter ps's range for method s.
func (s *MethodSpec) rangeOf(ps *ParamSpec) *Range {
	if o, ok := s.Overrides[ps.Name]; ok && o.Range != nil {
		return o.Range
	}
	return ps.Range
}

// Common are the parameters every method accepts.
var Common = []string{"weight", "density", "lambda", "normalize", "scope", "seed"}

// unusedRefused are the common parameters refused by a method that does
// not read them (the others are accepted and ignored).
var unusedRefused = []string{"weight", "density", "lambda"}

// paramSpecs are all parameters, by name.
var paramSpecs = map[string]*ParamSpec{}

func param(s ParamSpec) { paramSpecs[s.Name] = &s }

func init() {
	param(ParamSpec{Name: "weight", Python: "weights", Kind: KindFloat, PerModel: Each, Default: 1.0,
		Doc: "Per-model weight w_t (PCB: its per-task λ_t).",
		get: func(p *Params) ([]float64, bool) {
			if p.Weights == nil {
				return nil, false
			}
			out := make([]float64, len(p.Weights))
			for i, w := range p.Weights {
				out[i] = float64(w)
			}
			return out, true
		},
		set: func(p *Params, v []float64, _ bool) {
			p.Weights = make([]float32, len(v))
			for i, x := range v {
				p.Weights[i] = float32(x)
			}
		}})
	param(ParamSpec{Name: "density", Kind: KindFloat, PerModel: Either, Default: 1.0, PythonDefault: 0.2, Range: in(0, 1, true, false),
		Doc: "Fraction of task-vector entries kept (top-k, DARE's and DELLA's random drop, the breadcrumbs band, PCB's kept scores).",
		get: func(p *Params) ([]float64, bool) {
			if p.Densities != nil {
				return p.Densities, true
			}
			return []float64{p.Density}, false
		},
		set: func(p *Params, v []float64, per bool) {
			if per {
				p.Densities = slices.Clone(v) // Density stays the global value
				return
			}
			p.Density, p.Densities = v[0], nil
		}})
	param(ParamSpec{Name: "lambda", Python: "lam", Kind: KindFloat, PerModel: Global, Default: 1.0,
		Doc: "λ, the scale of the merged task vector (neuro: multiplies λ₁ and λ₂).",
		get: func(p *Params) ([]float64, bool) { return []float64{p.Lambda}, false },
		set: func(p *Params, v []float64, _ bool) { p.Lambda = v[0] }})
	param(ParamSpec{Name: "normalize", Kind: KindBool, PerModel: Global,
		Doc: "Divide by the sum of weights (of the agreeing models for TIES); the default is mergekit's, per method.",
		get: func(p *Params) ([]float64, bool) { return []float64{boolValue(p.Normalize)}, false },
		set: func(p *Params, v []float64, _ bool) { p.Normalize = v[0] != 0 }})
	param(ParamSpec{Name: "scope", Kind: KindChoice, PerModel: Global, Choices: []string{"tensor", "global"},
		Doc: "Over which entries top-k (and PCB's quantiles) rank: each tensor, or the whole model (ties at the cut kept in tensor-name order).",
		get: func(*Params) ([]float64, bool) { return nil, false },
		set: func(p *Params, v []float64, _ bool) { p.Scope = Scope(v[0]) }})
	param(ParamSpec{Name: "seed", Kind: KindInt, PerModel: Global, Default: 0, Range: &Range{Min: ptr(0)},
		Doc: "Seed of every random choice (DARE, DELLA); an entry's draw depends only on (seed, tensor name, model, entry).",
		get: func(*Params) ([]float64, bool) { return nil, false },
		set: func(p *Params, v []float64, _ bool) { p.Seed = uint64(v[0]) }})
	param(ParamSpec{Name: "gamma", Kind: KindFloat, PerModel: Either, Default: 0.01, Range: in(0, 1, false, true),
		Doc: "Breadcrumbs: fraction of the largest |τ| dropped before the next density fraction is kept, one value or one per model.",
		get: func(p *Params) ([]float64, bool) {
			if p.Gammas != nil {
				return p.Gammas, true
			}
			return []float64{p.Gamma}, false
		},
		set: func(p *Params, v []float64, per bool) {
			if per {
				p.Gammas = slices.Clone(v)
				return
			}
			p.Gamma, p.Gammas = v[0], nil
		}})
	param(ParamSpec{Name: "epsilon", Kind: KindFloat, PerModel: Either, Default: 0.15, Range: &Range{Min: ptr(0)},
		Doc: "DELLA: half-width ε of the keep probabilities, which run from density − ε to density + ε, one value or one per model.",
		get: func(p *Params) ([]float64, bool) {
			if p.Epsilons != nil {
				return p.Epsilons, true
			}
			return []float64{p.Epsilon}, false
		},
		set: func(p *Params, v []float64, per bool) {
			if per {
				p.Epsilons = slices.Clone(v)
				return
			}
			p.Epsilon, p.Epsilons = v[0], nil
		}})
	param(ParamSpec{Name: "rescale", Kind: KindBool, PerModel: Global,
		Doc: "Scale each sparsified task vector, per tensor and model, by one factor restoring its L1 norm (mergekit's rescale); the default is mergekit's, per method (true for DARE and DELLA).",
		get: func(p *Params) ([]float64, bool) { return []float64{boolValue(p.Rescale)}, false },
		set: func(p *Params, v []float64, _ bool) { p.Rescale = v[0] != 0 }})
	param(ParamSpec{Name: "t", Kind: KindFloat, PerModel: Global, Default: 0.5, Range: in(0, 1, false, false),
		Doc: "Slerp: interpolation parameter; 0 gives the first model, 1 the second.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.T}, false },
		set: func(p *Params, v []float64, _ bool) { p.T = v[0] }})
	param(ParamSpec{Name: "k", Kind: KindInt, PerModel: Global, Default: 2, Range: &Range{Min: ptr(0)},
		Doc: "Consensus: minimum number of TALL masks a coordinate must be active in.",
		get: func(p *Params) ([]float64, bool) { return []float64{float64(p.K)}, false },
		set: func(p *Params, v []float64, _ bool) { p.K = int(v[0]) }})
	param(ParamSpec{Name: "tall_lambda", Kind: KindFloat, PerModel: Either, Default: 0.4, Range: &Range{Min: ptr(0)},
		Doc: "Consensus: λ_t of the TALL masks, one value or one per model.",
		get: func(p *Params) ([]float64, bool) {
			if p.TallLambdas != nil {
				return p.TallLambdas, true
			}
			return []float64{p.TallLambda}, false
		},
		set: func(p *Params, v []float64, per bool) {
			if per {
				p.TallLambdas = slices.Clone(v)
				return
			}
			p.TallLambda, p.TallLambdas = v[0], nil
		}})
	param(ParamSpec{Name: "mask_rate", Kind: KindFloat, PerModel: Global, Default: 0.5, Range: in(0, 1, false, true),
		Doc: "NeuroMerging: fraction of each task vector trimmed away (0.5: the top half by magnitude is kept).",
		get: func(p *Params) ([]float64, bool) { return []float64{p.MaskRate}, false },
		set: func(p *Params, v []float64, _ bool) { p.MaskRate = v[0] }})
	param(ParamSpec{Name: "lam1", Kind: KindFloat, PerModel: Global, Default: 0.0,
		Doc: "NeuroMerging: λ₁, the scale of the part parallel to the pre-trained neuron.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.Lam1}, false },
		set: func(p *Params, v []float64, _ bool) { p.Lam1 = v[0] }})
	param(ParamSpec{Name: "lam2", Kind: KindFloat, PerModel: Global, Default: nil, Range: &Range{Min: ptr(0), MinOpen: true},
		Auto: "1 / (1 − max_t σ_t), which restores the L1 mass the trim removed",
		Doc:  "NeuroMerging: λ₂, the scale of the orthogonal part and of the 1-D tensors.",
		get: func(p *Params) ([]float64, bool) {
			if p.Lam2 == 0 {
				return nil, false // automatic
			}
			return []float64{p.Lam2}, false
		},
		set: func(p *Params, v []float64, _ bool) { p.Lam2 = v[0] }})
	param(ParamSpec{Name: "statistics", Kind: KindData, PerModel: Each,
		Doc: "Fisher merging's diagonal Fishers or RegMean's Gram matrices, one set per model (npsfuse.stats; in YAML, each model's statistics file).",
		get: func(*Params) ([]float64, bool) { return nil, false },
		set: func(*Params, []float64, bool) {}})
	param(ParamSpec{Name: "fisher_floor", Kind: KindFloat, PerModel: Global, Default: 1e-6, Range: in(0, 1e30, true, false),
		Doc: "Fisher merging: lower bound of every Fisher value (entries no example touched fall back to the weighted mean).",
		get: func(p *Params) ([]float64, bool) { return []float64{p.FisherFloor}, false },
		set: func(p *Params, v []float64, _ bool) { p.FisherFloor = v[0] }})
	param(ParamSpec{Name: "alpha", Kind: KindFloat, PerModel: Global, Default: 0.9, Range: in(0, 1, false, false),
		Doc: "RegMean: multiplier of the Gram matrices' off-diagonal entries.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.Alpha}, false },
		set: func(p *Params, v []float64, _ bool) { p.Alpha = v[0] }})
	param(ParamSpec{Name: "common_space_fraction", Kind: KindFloat, PerModel: Global, Default: 0.8, Range: in(0, 1, false, false),
		Doc: "Iso-CTS: share of each matrix's rank given to the common subspace; the rest is split evenly between the tasks.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.CommonSpaceFraction}, false },
		set: func(p *Params, v []float64, _ bool) { p.CommonSpaceFraction = v[0] }})
	param(ParamSpec{Name: "scale", Kind: KindFloat, PerModel: Either, Default: 1.0,
		Doc: "Passthrough: factor the model's tensor is multiplied by (1 keeps it as it is), one value or one per model.",
		get: func(p *Params) ([]float64, bool) {
			if p.Scales != nil {
				return p.Scales, true
			}
			return []float64{p.Scale}, false
		},
		set: func(p *Params, v []float64, per bool) {
			if per {
				p.Scales = slices.Clone(v)
				return
			}
			p.Scale, p.Scales = v[0], nil
		}})
}

// methodSpecs are the methods' rows, by name.
var methodSpecs = map[string]*MethodSpec{}

// spec adds a method's row: its name, doc, the parameters it reads, and
// options (model bounds, defaults).
func spec(s MethodSpec) {
	if s.MinModels == 0 {
		s.MinModels = 1
	}
	if s.Scope == "" {
		s.Scope = "tensor"
	}
	methodSpecs[s.Name] = &s
}

// Spec returns a method's row (ok false for an unknown method).
func Spec(method string) (MethodSpec, bool) {
	s, ok := methodSpecs[method]
	if !ok {
		return MethodSpec{}, false
	}
	c := *s
	c.Params = slices.Clone(s.Params)
	return c, true
}

// Param returns a parameter's declaration (ok false for an unknown name).
func Param(name string) (ParamSpec, bool) {
	p, ok := paramSpecs[name]
	if !ok {
		return ParamSpec{}, false
	}
	return *p, true
}

// ParamNames returns every parameter's name, sorted.
func ParamNames() []string { return slices.Sorted(maps.Keys(paramSpecs)) }

// Owners returns the methods that read parameter name, sorted.
func Owners(name string) []string {
	var out []string
	for m, s := range methodSpecs {
		if slices.Contains(s.Params, name) {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// Accepts reports whether method takes parameter name: the common
// parameters and its own.
func (s MethodSpec) Accepts(name string) bool {
	return slices.Contains(Common, name) || slices.Contains(s.Params, name)
}

// Reads reports whether the method uses parameter name.
func (s MethodSpec) Reads(name string) bool { return slices.Contains(s.Params, name) }

// Own returns the method's parameters that are not common, in table order.
func (s MethodSpec) Own() []string {
	var out []string
	for _, p := range s.Params {
		if !slices.Contains(Common, p) {
			out = append(out, p)
		}
	}
	return out
}

// Defaults returns the method's Params when nothing is given.
func (s MethodSpec) Defaults() Params {
	p := Params{Normalize: s.Normalize, Rescale: s.Rescale}
	p.Scope, _ = ParseScope(s.Scope)
	for _, ps := range paramSpecs {
		if f, ok := ps.Default.(float64); ok && ps.Kind == KindFloat {
			ps.set(&p, []float64{f}, false)
		}
		if i, ok := ps.Default.(int); ok {
			ps.set(&p, []float64{float64(i)}, false)
		}
	}
	for name, o := range s.Overrides {
		switch f, ok := o.Default.(float64); {
		case ok:
			paramSpecs[name].set(&p, []float64{f}, false)
		case o.Required:
			paramSpecs[name].set(&p, []float64{0}, false) // unset: the caller must give it
		}
	}
	p.Weights = nil
	return p
}

// Values are a call's raw parameter values, as a door received them:
// numbers (float64 or int), booleans, strings, or nil for "automatic".
type Values struct {
	// Global holds the values given once, by parameter name.
	Global map[string]any
	// Models holds each model's own values (mergekit's models[i].parameters;
	// Python's lists), by parameter name; nil or shorter than the model
	// count for models with none.
	Models []map[string]any
}

// Problem is one thing wrong with a call's parameters.
type Problem struct {
	// Param is the parameter's name ("" for the call as a whole).
	Param string
	// Model is the model whose own value is wrong, or −1.
	Model int
	// Msg says what is wrong, without the parameter's location (the door
	// adds it: "parameters.density", "models[1].parameters.density",
	// "density of model 1").
	Msg string
}

// Where names a parameter's location for messages.
type Where func(param string, model int) string

// NameWhere names a parameter by its spec name: "lambda", "density of
// model 1" (the engine's messages).
func NameWhere(param string, model int) string {
	if model >= 0 {
		return fmt.Sprintf("%s of model %d", param, model)
	}
	return param
}

// PythonWhere names a parameter as npsfuse.merge's keyword does.
func PythonWhere(param string, model int) string {
	name := param
	if ps, ok := paramSpecs[param]; ok && ps.Python != "" {
		name = ps.Python
	}
	if model >= 0 {
		return fmt.Sprintf("%s of model %d", name, model)
	}
	return name
}

// Format writes problems as sentences, sorted, each naming its location.
func Format(ps []Problem, where Where) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		if p.Param == "" {
			out[i] = p.Msg
		} else {
			out[i] = where(p.Param, p.Model) + " " + p.Msg
		}
	}
	sort.Strings(out)
	return out
}

// Resolve checks a call's raw values against method's row and returns
// the Params to merge with, or every problem found. Parameters the method
// does not take are problems (naming the methods that do), and so are
// weight, density and lambda where it does not read them; the other
// common ones it ignores are accepted. nModels is the number of fine-tuned models.
func Resolve(method string, nModels int, v Values) (Params, []Problem) {
	s, ok := methodSpecs[method]
	if !ok {
		return Params{}, []Problem{{Msg: fmt.Sprintf("unknown merge method %q (valid: %s)", method, strings.Join(Methods(), ", "))}}
	}
	p := s.Defaults()
	var bad []Problem
	// Seeds above 2⁵³ do not survive float64: integers are kept exactly too.
	exact := map[string]uint64{}
	add := func(param string, model int, format string, a ...any) {
		bad = append(bad, Problem{Param: param, Model: model, Msg: fmt.Sprintf(format, a...)})
	}
	// convert reads one raw value of ps; ok false after adding a problem.
	var convert func(ps *ParamSpec, raw any, model int) (float64, bool)
	convert = func(ps *ParamSpec, raw any, model int) (float64, bool) {
		switch ps.Kind {
		case KindBool:
			b, isBool := raw.(bool)
			if !isBool {
				add(ps.Name, model, "must be true or false, got %v", raw)
				return 0, false
			}
			if b {
				return 1, true
			}
			return 0, true
		case KindChoice:
			str, isStr := raw.(string)
			i := slices.Index(ps.Choices, str)
			if !isStr || i < 0 {
				add(ps.Name, model, "must be one of %s, got %v", strings.Join(quoted(ps.Choices), ", "), raw)
				return 0, false
			}
			return float64(i), true
		}
		var x float64
		switch n := raw.(type) {
		case int:
			x = float64(n)
			if n >= 0 {
				exact[ps.Name] = uint64(n)
			}
		case int64:
			x = float64(n)
			if n >= 0 {
				exact[ps.Name] = uint64(n)
			}
		case uint64: // above 2⁶³ (a seed): kept exactly
			exact[ps.Name] = n
			return float64(n), true
		case float64:
			x = n
		case float32:
			x = float64(n)
		case json.Number: // Python's JSON
			return convert(ps, jsonNumber(n), model)
		case string: // Python's NaN and ±Inf, which JSON cannot carry
			f, err := strconv.ParseFloat(n, 64)
			if err != nil || !(math.IsNaN(f) || math.IsInf(f, 0)) {
				add(ps.Name, model, "must be a number, got %v", raw)
				return 0, false
			}
			x = f
		case []any, map[string]any:
			add(ps.Name, model, "must be a number, got %v (gradients and filter lists are taken by numeric and true/false parameters only)", raw)
			return 0, false
		default:
			add(ps.Name, model, "must be a number, got %v", raw)
			return 0, false
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			add(ps.Name, model, "must be a finite number, got %v", x)
			return 0, false
		}
		if ps.Kind == KindInt && x != math.Trunc(x) {
			add(ps.Name, model, "must be a whole number, got %v", x)
			return 0, false
		}
		if ps.Kind == KindInt && math.Abs(x) >= 1<<63 {
			add(ps.Name, model, "must be below 2⁶³, got %v", x)
			return 0, false
		}
		// Ranges of values Params cannot hold (a negative seed) are
		// checked here; the rest by checkValues below.
		if pv, _ := ps.get(&Params{}); pv == nil && ps.Range != nil && !ps.Range.contains(x) {
			add(ps.Name, model, "must %s, got %v", ps.Range.describe(), x)
			return 0, false
		}
		return x, true
	}
	accepts := func(name string, model int, raw any) (*ParamSpec, bool) {
		ps, known := paramSpecs[name]
		if !known || !s.Accepts(name) {
			if owners := Owners(name); known && len(owners) > 0 {
				add(name, model, "is not a parameter of %s (it belongs to %s)", method, strings.Join(owners, ", "))
			} else {
				add(name, model, "is not a parameter of %s (its own parameters: %s)%s", method, orNone(s.Own()), s.suggest(name))
			}
			return nil, false
		}
		// weight, density and lambda change the result of every method that
		// reads them: given to one that does not, the value would be ignored
		// silently, so it is refused (issue 18 item 7). The run options
		// (normalize, scope, seed) are still accepted everywhere.
		if raw != nil && slices.Contains(unusedRefused, name) && !s.Reads(name) {
			add(name, model, "is not used by %s (its parameters: %s)", method, orNone(s.Params))
			return nil, false
		}
		return ps, true
	}
	// setting reads a value that may be a gradient or a filter list: a
	// Setting when it varies by tensor (its numbers checked against the
	// parameter's range here), else its one number.
	setting := func(ps *ParamSpec, raw any, model int) (float64, Setting, bool) {
		switch raw.(type) {
		case []any, map[string]any:
		default:
			x, ok := convert(ps, raw, model)
			return x, nil, ok
		}
		if ps.Kind != KindFloat && ps.Kind != KindBool {
			x, ok := convert(ps, raw, model) // refused, naming the kinds that take lists
			return x, nil, ok
		}
		ok := true
		leaf := func(v any) (float64, bool) {
			x, good := convert(ps, v, model)
			if good && s.Reads(ps.Name) {
				if r := s.rangeOf(ps); r != nil && !r.contains(x) {
					add(ps.Name, model, "must %s, got %v", r.describe(), x)
					good = false
				}
			}
			ok = ok && good
			return x, good
		}
		st, msg := parseSetting(raw, leaf, ps.Kind == KindBool)
		if msg != "" {
			if msg != "-" {
				add(ps.Name, model, "%s", msg)
			}
			return 0, nil, false
		}
		if !ok {
			return 0, nil, false
		}
		if !st.Varies() {
			return st[0].Values[0], nil, true
		}
		return 0, st, true
	}
	varyGlobal := map[string]Setting{}
	varyModels := map[string][]Setting{}
	perModel := map[string][]float64{}
	perGiven := map[string][]bool{}
	if len(v.Models) > nModels {
		add("", -1, "parameters given for %d models, but there are %d", len(v.Models), nModels)
	}
	for m, mv := range v.Models {
		for _, name := range slices.Sorted(maps.Keys(mv)) {
			ps, ok := accepts(name, m, mv[name])
			if !ok || ps.Kind == KindData {
				continue
			}
			if ps.PerModel == Global {
				add(name, m, "takes one value for all models, not one per model")
				continue
			}
			if mv[name] == nil {
				continue
			}
			x, varies, ok := setting(ps, mv[name], m)
			if !ok {
				continue
			}
			if varies != nil {
				if varyModels[name] == nil {
					varyModels[name] = make([]Setting, nModels)
				}
				varyModels[name][m] = varies
				continue
			}
			if perModel[name] == nil {
				perModel[name] = make([]float64, nModels)
				perGiven[name] = make([]bool, nModels)
			}
			perModel[name][m], perGiven[name][m] = x, true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(v.Global)) {
		ps, ok := accepts(name, -1, v.Global[name])
		if !ok || ps.Kind == KindData {
			continue
		}
		raw := v.Global[name]
		if raw == nil {
			if ps.Auto == "" && ps.Default != nil {
				add(name, -1, "must be given a value (null is not allowed)")
			}
			continue
		}
		x, varies, ok := setting(ps, raw, -1)
		if !ok {
			continue
		}
		if varies != nil {
			varyGlobal[name] = varies
			continue
		}
		if ps.PerModel == Global {
			ps.set(&p, []float64{x}, false)
			if u, ok := exact[name]; ok && name == "seed" {
				p.Seed = u
			}
			continue
		}
		// A global value of a per-model parameter fills the models that
		// have no own value.
		if perModel[name] == nil {
			if ps.PerModel == Each {
				vals := make([]float64, nModels)
				for i := range vals {
					vals[i] = x
				}
				ps.set(&p, vals, true)
			} else {
				ps.set(&p, []float64{x}, false)
			}
			continue
		}
		if ps.PerModel == Either {
			ps.set(&p, []float64{x}, false) // the global value, besides the models' own
		}
		for i := range perModel[name] {
			if !perGiven[name][i] {
				perModel[name][i], perGiven[name][i] = x, true
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(perModel)) {
		ps := paramSpecs[name]
		vals, given := perModel[name], perGiven[name]
		fill := 1.0 // weight's default
		if cur, _ := ps.get(&p); len(cur) == 1 {
			fill = cur[0] // the default (or the global value)
		}
		for i := range vals {
			if !given[i] {
				vals[i] = fill
			}
		}
		ps.set(&p, vals, true)
	}
	for name, o := range s.Overrides {
		_, global := v.Global[name]
		_, per := perModel[name]
		if o.Required && (!global || v.Global[name] == nil) && !per {
			add(name, -1, "must be given: %s has no default for it", method)
		}
	}
	if p.Weights == nil && nModels > 0 {
		w := make([]float64, nModels)
		for i := range w {
			w[i] = 1
		}
		paramSpecs["weight"].set(&p, w, true)
	}
	if len(varyGlobal)+len(varyModels) > 0 {
		p.Tensorwise = tensorwise(s, &p, nModels, v, varyGlobal, varyModels)
		if why := s.wholeModel(&p); why != "" {
			for _, name := range p.Tensorwise.names() {
				add(name, -1, "varies by tensor (a gradient or filter list), which %s cannot take: %s", s.Name, why)
			}
		}
	}
	if m, ok := registry[s.Name]; ok && p.Rescale && s.Reads("rescale") {
		if _, ok := m.Sparsify.(rescaler); !ok {
			if _, none := m.Sparsify.(keepAll); !none {
				add("rescale", -1, "true is not supported for %s (its selection keeps no L1 norm to restore; give false)", s.Name)
			}
		}
	}
	bad = append(bad, checkValues(s, &p, nModels)...)
	return p, bad
}

// tensorwise gathers every source of the parameters that vary by tensor
// (see TensorSettings): the varying ones, the numbers given beside them
// (already resolved into p) and the defaults.
func tensorwise(s *MethodSpec, p *Params, nModels int, v Values, varyGlobal map[string]Setting, varyModels map[string][]Setting) *TensorSettings {
	ts := &TensorSettings{Global: map[string]Setting{}, Models: make([]map[string]Setting, nModels), Default: map[string]float64{}}
	def := s.Defaults()
	names := map[string]bool{}
	for n := range varyGlobal {
		names[n] = true
	}
	for n := range varyModels {
		names[n] = true
	}
	number := func(raw any) (Setting, bool) {
		var x float64
		switch n := raw.(type) {
		case int:
			x = float64(n)
		case int64:
			x = float64(n)
		case float64:
			x = n
		case float32:
			x = float64(n)
		case json.Number:
			f, err := n.Float64()
			if err != nil {
				return nil, false
			}
			x = f
		default:
			return nil, false
		}
		return Setting{{Values: []float64{x}}}, true
	}
	for name := range names {
		ps := paramSpecs[name]
		d := 1.0 // weight's default
		if cur, _ := ps.get(&def); len(cur) == 1 {
			d = cur[0]
		}
		ts.Default[name] = d
		if g, ok := varyGlobal[name]; ok {
			ts.Global[name] = g
		} else if g, ok := number(v.Global[name]); ok {
			ts.Global[name] = g
		}
		for m := range nModels {
			own := Setting(nil)
			if vm := varyModels[name]; vm != nil {
				own = vm[m]
			}
			if own == nil && m < len(v.Models) {
				own, _ = number(v.Models[m][name])
			}
			if own != nil {
				if ts.Models[m] == nil {
					ts.Models[m] = map[string]Setting{}
				}
				ts.Models[m][name] = own
			}
		}
	}
	// p holds the values of tensors no condition matches in any source
	// (what a check of p sees): the defaults.
	for name := range names {
		ps := paramSpecs[name]
		if ps.PerModel == Global {
			ps.set(p, []float64{ts.Default[name]}, false)
			continue
		}
		vals := make([]float64, nModels)
		for m := range vals {
			vals[m] = ts.Default[name]
		}
		ps.set(p, vals, true)
	}
	return ts
}

// wholeModel says why the method, with p, ranks or measures the whole
// model at once (so one value per tensor cannot apply), or "".
func (s *MethodSpec) wholeModel(p *Params) string {
	if p.Scope == ScopeGlobal {
		return "scope: global ranks every tensor of a model together"
	}
	m, ok := registry[s.Name]
	if !ok {
		return ""
	}
	e := &engine{method: m, p: *p}
	if wm, ok := m.Combine.(wholeModeler); ok && wm.wholeModel(e) {
		return "it measures the whole model before merging any tensor"
	}
	return ""
}

// Check applies the method's rules to Params built directly (Go callers,
// and every merge after Resolve): model count and every range. It returns
// the problems found.
func Check(method string, p *Params, nModels int) []Problem {
	s, ok := methodSpecs[method]
	if !ok {
		return []Problem{{Msg: fmt.Sprintf("unknown merge method %q (valid: %s)", method, strings.Join(Methods(), ", "))}}
	}
	return checkValues(s, p, nModels)
}

func checkValues(s *MethodSpec, p *Params, nModels int) []Problem {
	var bad []Problem
	switch {
	case s.MaxModels > 0 && s.MinModels == s.MaxModels && nModels != s.MinModels:
		bad = append(bad, Problem{Model: -1, Msg: fmt.Sprintf("%s merges exactly %d models, got %d", s.Name, s.MinModels, nModels)})
	case nModels < s.MinModels:
		bad = append(bad, Problem{Model: -1, Msg: fmt.Sprintf("%s needs at least %d fine-tuned models, got %d", s.Name, s.MinModels, nModels)})
	case s.MaxModels > 0 && nModels > s.MaxModels:
		bad = append(bad, Problem{Model: -1, Msg: fmt.Sprintf("%s merges at most %d models, got %d", s.Name, s.MaxModels, nModels)})
	}
	names := slices.Clone(Common)
	for _, n := range s.Params {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, name := range names {
		ps := paramSpecs[name]
		vals, per := ps.get(p)
		if per && len(vals) != nModels {
			bad = append(bad, Problem{Param: name, Model: -1, Msg: fmt.Sprintf("has %d values for %d models", len(vals), nModels)})
			continue
		}
		for i, x := range vals {
			model := -1
			if per {
				model = i
			}
			if math.IsNaN(x) || math.IsInf(x, 0) {
				bad = append(bad, Problem{Param: name, Model: model, Msg: fmt.Sprintf("must be a finite number, got %v", x)})
				continue
			}
			if r := s.rangeOf(ps); r != nil && s.Reads(name) && !r.contains(x) {
				bad = append(bad, Problem{Param: name, Model: model, Msg: fmt.Sprintf("must %s, got %v", r.describe(), x)})
			}
		}
	}
	return bad
}

// boolValue is 1 for true, 0 for false.
func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func quoted(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = fmt.Sprintf("%q", x)
	}
	return out
}

// suggest is " (did you mean X?)" when name looks like a misspelling of
// one of the method's parameters (common ones included), else "".
func (s MethodSpec) suggest(name string) string {
	best, bestD := "", 0
	for _, c := range slices.Concat(s.Params, Common) {
		d := editDistance(strings.ToLower(name), c)
		if d <= max(1, len(c)/3) && (best == "" || d < bestD) {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	if py := paramSpecs[best].Python; py != "" && py != best {
		return fmt.Sprintf(" (did you mean %s? In Python: %s=)", best, py)
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
