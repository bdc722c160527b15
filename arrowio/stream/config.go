package stream

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// ErrConfig marks a merge configuration with problems; its message lists
// every problem found, one per line.
var ErrConfig = errors.New("invalid merge config")

// Model is one entry of the config's models list.
type Model struct {
	Path    string
	Weight  float64
	Density *float64 // nil: the global density
	// Statistics is the model's statistics file for the data-aware
	// methods (fisher, regmean): a safetensors file of Fisher diagonals
	// or Gram matrices by tensor name, resolved like the model's path.
	Statistics string
}

// Config is a validated merge configuration in mergekit's schema plus
// npsfuse's own keys (scope, seed, transposed).
type Config struct {
	Method    string
	BaseModel string
	Models    []Model
	Normalize *bool // nil: the method's default
	Lambda    float64
	Density   float64
	DType     string // mergekit's dtype (loading/compute dtype; arithmetic here is float32)
	OutDType  string // output dtype; "" = DType, else the base's
	Scope     merge.Scope
	scopeSet  bool
	// Extra holds method-specific parameters (gamma, epsilon, t, k,
	// tall_lambda, mask_rate, lam1, lam2).
	Extra      map[string]float64
	Seed       uint64
	Transposed []string
	// Notes are remarks for the user (ignored keys and the like).
	Notes []string
}

// DefaultNormalize is mergekit's default for `normalize` per method.
var DefaultNormalize = map[string]bool{
	"linear": true, "task_arithmetic": false, "ties": true, "dare_ties": false,
	"dare_linear": false, "magnitude_prune": false, "breadcrumbs": false,
	"breadcrumbs_ties": false, "della": true, "della_linear": false,
}

var (
	topKeys    = set("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "scope", "seed", "transposed")
	globalKeys = set("normalize", "lambda", "int8_mask", "rescale", "density", "weight",
		"gamma", "epsilon", "t", "k", "tall_lambda", "mask_rate", "lam1", "lam2",
		"fisher_floor", "alpha", "common_space_fraction")
	// methodKeys are the global parameters of particular methods (mergekit's
	// names where mergekit has the method), passed on to the engine.
	methodKeys = map[string][]string{
		"gamma":       {"breadcrumbs", "breadcrumbs_ties"},
		"epsilon":     {"della", "della_linear"},
		"t":           {"slerp"},
		"k":           {"consensus_ta", "consensus_ties"},
		"tall_lambda": {"consensus_ta", "consensus_ties"},
		"mask_rate":   {"neuro"},
		"lam1":        {"neuro"},
		"lam2":        {"neuro"},

		"fisher_floor": {"fisher"},
		"alpha":        {"regmean"},

		"common_space_fraction": {"iso_cts"},
	}
	modelKeys = set("model", "parameters")
	perModel  = set("weight", "density", "statistics")
	// dataAware are the methods that need every model's statistics file.
	dataAware = set("fisher", "regmean")
)

func set(keys ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// problems collects every problem of a config.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

// ParseConfig parses YAML (or JSON) text and validates it completely,
// reporting every problem at once. Relative model paths are resolved
// against baseDir (the working directory, as mergekit does, when empty).
// Paths must exist.
func ParseConfig(text []byte, baseDir string) (*Config, error) {
	var raw any
	if err := yaml.Unmarshal(text, &raw); err != nil {
		return nil, fmt.Errorf("%w: not valid YAML: %v", ErrConfig, err)
	}
	top, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the config must be a mapping with merge_method, base_model and models", ErrConfig)
	}
	var bad problems
	c := &Config{Lambda: 1}
	for k := range top {
		if !topKeys[k] {
			bad.add("unknown key %q (known: %s)", k, keys(topKeys))
		}
	}
	c.Method = str(top, "merge_method", &bad)
	switch {
	case c.Method == "":
		if absent(top["merge_method"]) {
			bad.add("merge_method is missing")
		}
	default:
		if _, ok := merge.Lookup(c.Method); !ok {
			bad.add("unknown merge_method %q (valid: %s)", c.Method, strings.Join(merge.Methods(), ", "))
		}
	}
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) || baseDir == "" {
			if p == "" {
				return p
			}
			return filepath.Clean(p) // so that "./base" and "base/" name the same model
		}
		return filepath.Join(baseDir, p)
	}
	c.BaseModel = resolve(str(top, "base_model", &bad))
	if c.BaseModel == "" && absent(top["base_model"]) && c.Method != "linear" {
		bad.add("base_model is missing (every method but linear needs the pre-trained model)")
	}
	if c.BaseModel != "" {
		if _, err := os.Stat(c.BaseModel); err != nil {
			bad.add("base_model %s does not exist", c.BaseModel)
		}
	}
	// Global parameters.
	gp := map[string]any{}
	if v, ok := top["parameters"]; ok && v != nil {
		m, ok := v.(map[string]any)
		if !ok {
			bad.add("parameters must be a mapping")
		} else {
			gp = m
		}
	}
	for k := range gp {
		if !globalKeys[k] {
			bad.add("unknown parameter %q (known: %s)", k, keys(globalKeys))
		}
	}
	globalWeight := 1.0
	if _, ok := gp["weight"]; ok {
		globalWeight = num(gp, "weight", "parameters.weight", &bad)
	}
	c.Density = 1
	if _, ok := gp["density"]; ok {
		c.Density = num(gp, "density", "parameters.density", &bad)
		checkDensity(c.Density, "parameters.density", &bad)
	}
	for k := range gp {
		if owners, ok := methodKeys[k]; ok {
			if c.Method != "" && !slices.Contains(owners, c.Method) {
				bad.add("unknown parameter %q for merge_method %q (it belongs to %s)", k, c.Method, strings.Join(owners, ", "))
				continue
			}
			if c.Extra == nil {
				c.Extra = map[string]float64{}
			}
			c.Extra[k] = num(gp, k, "parameters."+k, &bad)
		}
	}
	if _, ok := gp["lambda"]; ok {
		c.Lambda = num(gp, "lambda", "parameters.lambda", &bad)
	}
	if v, ok := gp["normalize"]; ok {
		if b, ok := v.(bool); ok {
			c.Normalize = &b
		} else {
			bad.add("parameters.normalize must be true or false, got %v", v)
		}
	}
	if _, ok := gp["int8_mask"]; ok {
		c.Notes = append(c.Notes, "parameters.int8_mask is accepted and ignored: npsfuse keeps masks as it needs them")
	}
	if v, ok := gp["rescale"]; ok {
		if b, ok := v.(bool); !ok || !b {
			bad.add("parameters.rescale: only true (DARE's 1/density rescale) is supported, got %v", v)
		}
	}
	// Models.
	list, ok := top["models"].([]any)
	if !ok || len(list) == 0 {
		bad.add("models must be a non-empty list of {model: PATH, parameters: {...}}")
	}
	skippedBase := 0
	for i, item := range list {
		where := fmt.Sprintf("models[%d]", i)
		m, ok := item.(map[string]any)
		if !ok {
			bad.add("%s must be a mapping with a model key", where)
			continue
		}
		for k := range m {
			if !modelKeys[k] {
				bad.add("%s: unknown key %q (known: model, parameters)", where, k)
			}
		}
		mod := Model{Path: resolve(strAt(m, "model", where+".model", &bad)), Weight: globalWeight}
		if mod.Path == "" {
			if absent(m["model"]) { // else not a string, reported by strAt
				bad.add("%s: model is missing", where)
			}
		} else if _, err := os.Stat(mod.Path); err != nil {
			bad.add("%s: model %s does not exist", where, mod.Path)
		}
		if pv, ok := m["parameters"]; ok && pv != nil {
			pm, ok := pv.(map[string]any)
			if !ok {
				bad.add("%s.parameters must be a mapping", where)
				pm = nil
			}
			for k := range pm {
				if !perModel[k] {
					bad.add("%s: unknown parameter %q (known: %s)", where, k, keys(perModel))
				}
			}
			if _, ok := pm["weight"]; ok {
				mod.Weight = num(pm, "weight", where+".parameters.weight", &bad)
			}
			if _, ok := pm["density"]; ok {
				d := num(pm, "density", where+".parameters.density", &bad)
				checkDensity(d, where+".parameters.density", &bad)
				mod.Density = &d
			}
			if v, ok := pm["statistics"]; ok && v != nil {
				at := where + ".parameters.statistics"
				switch {
				case c.Method != "" && !dataAware[c.Method]:
					bad.add("%s: only the data-aware methods (fisher, regmean) take statistics, not %q", at, c.Method)
				default:
					if mod.Statistics = resolve(strAt(pm, "statistics", at, &bad)); mod.Statistics != "" {
						if st, err := os.Stat(mod.Statistics); err != nil || st.IsDir() {
							bad.add("%s: %s is not a file", at, mod.Statistics)
						}
					}
				}
			}
		}
		if dataAware[c.Method] && mod.Statistics == "" && mod.Path != "" && mod.Path != c.BaseModel {
			bad.add("%s: %s needs parameters.statistics (the model's statistics file, from npsfuse.stats.save)", where, c.Method)
		}
		// mergekit lets the base model appear among the models; task-vector
		// methods skip it (its task vector is zero).
		if mod.Path != "" && mod.Path == c.BaseModel && c.Method != "linear" {
			c.Notes = append(c.Notes, fmt.Sprintf("%s is the base model; it is left out of the merge", where))
			skippedBase++
			continue
		}
		c.Models = append(c.Models, mod)
	}
	if skippedBase > 0 && len(c.Models) == 0 {
		bad.add("models lists only the base model: nothing to merge")
	}
	for _, k := range []string{"dtype", "out_dtype"} {
		s := str(top, k, &bad)
		if s != "" {
			if _, err := tensor.ParseDType(s); err != nil {
				bad.add("%s: %v", k, err)
			}
		}
		if k == "dtype" {
			c.DType = s
		} else {
			c.OutDType = s
		}
	}
	if v, ok := top["tokenizer_source"]; ok && v != nil && v != "base" {
		bad.add("tokenizer_source: only \"base\" is supported (the base model's tokenizer is copied), got %v", v)
	}
	if s := str(top, "scope", &bad); s != "" {
		sc, err := merge.ParseScope(s)
		if err != nil {
			bad.add("scope: %v", err)
		}
		c.Scope, c.scopeSet = sc, true
	}
	if _, ok := top["seed"]; ok {
		s := num(top, "seed", "seed", &bad)
		if s < 0 || s != math.Trunc(s) || s > 1<<53 {
			bad.add("seed must be a non-negative integer, got %v", s)
		}
		c.Seed = uint64(s)
	}
	if v, ok := top["transposed"]; ok && v != nil {
		l, ok := v.([]any)
		if !ok {
			bad.add("transposed must be a list of tensor-name patterns")
		}
		for _, p := range l {
			s, ok := p.(string)
			if !ok {
				bad.add("transposed: %v is not a string", p)
				continue
			}
			if _, err := filepath.Match(s, ""); err != nil {
				bad.add("transposed: bad pattern %q: %v", s, err)
			}
			c.Transposed = append(c.Transposed, s)
		}
	}
	if c.Method == "slerp" && len(c.Models) != 2 {
		bad.add("slerp merges exactly two models, got %d", len(c.Models))
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		// "prefix: " then the list: Python maps errors by their "…: " prefix.
		return nil, fmt.Errorf("%w: the config has %s:\n  - %s", ErrConfig, plural(len(bad), "problem"), strings.Join(bad, "\n  - "))
	}
	return c, nil
}

// Params turns the config into the engine's parameters.
func (c *Config) Params() merge.Params {
	p := merge.DefaultParams(c.Method)
	p.Density, p.Lambda, p.Seed = c.Density, c.Lambda, c.Seed
	if c.scopeSet {
		p.Scope = c.Scope
	}
	if n, known := DefaultNormalize[c.Method]; known {
		p.Normalize = n
	}
	for k, v := range c.Extra {
		switch k {
		case "gamma":
			p.Gamma = v
		case "epsilon":
			p.Epsilon = v
		case "t":
			p.T = v
		case "k":
			p.K = int(v)
		case "tall_lambda":
			p.TallLambda = v
		case "mask_rate":
			p.MaskRate = v
		case "lam1":
			p.Lam1 = v
		case "lam2":
			p.Lam2 = v
		case "fisher_floor":
			p.FisherFloor = v
		case "alpha":
			p.Alpha = v
		case "common_space_fraction":
			p.CommonSpaceFraction = v
		}
	}
	if c.Normalize != nil {
		p.Normalize = *c.Normalize
	}
	per := false
	for _, m := range c.Models {
		p.Weights = append(p.Weights, float32(m.Weight))
		if m.Density != nil {
			per = true
		}
	}
	if per {
		for _, m := range c.Models {
			d := c.Density
			if m.Density != nil {
				d = *m.Density
			}
			p.Densities = append(p.Densities, d)
		}
	}
	return p
}

// plural is "1 problem", "2 problems".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// absent reports whether a key's value is missing, null or empty.
func absent(v any) bool { return v == nil || v == "" }

func checkDensity(d float64, where string, bad *problems) {
	if !(d > 0 && d <= 1) {
		bad.add("%s must lie in (0, 1], got %v", where, d)
	}
}

func str(m map[string]any, k string, bad *problems) string { return strAt(m, k, k, bad) }

// strAt is str with where naming the key in messages.
func strAt(m map[string]any, k, where string, bad *problems) string {
	v, ok := m[k]
	if !ok || v == nil {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		bad.add("%s must be a string, got %v", where, v)
	}
	return s
}

func num(m map[string]any, k, where string, bad *problems) float64 {
	switch v := m[k].(type) {
	case int:
		return float64(v)
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			bad.add("%s must be finite, got %v", where, v)
		}
		return v
	case []any:
		bad.add("%s: per-layer gradients (lists) are not supported yet; give one number", where)
	default:
		bad.add("%s must be a number, got %v", where, m[k])
	}
	return 0
}

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}
