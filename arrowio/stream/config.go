package stream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// ErrConfig marks a merge configuration with problems; its message lists
// every problem found, one per line.
var ErrConfig = fault.New(fault.InvalidInput, "invalid merge config")

// Model is one entry of the config's models list.
type Model struct {
	Path string
	// Parameters are the model's own parameters as written (weight,
	// density, …), for the model card; the merge uses Config.Params.
	Parameters map[string]any
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
	// Models are the models merged whole; with Slices, every model the
	// slices read, once each.
	Models []Model
	// Slices, when set, are the output's slices (mergekit's `slices:`,
	// instead of models: frankenmerges; see slices.go).
	Slices []Slice
	// Parameters are the global parameters as written, for the model card.
	Parameters map[string]any
	DType      string // mergekit's dtype (loading/compute dtype; arithmetic here is float32)
	OutDType   string // output dtype; "" = DType, else the base's
	Transposed []string
	// params are the engine's parameters, resolved by merge.Resolve from
	// the method's row of the spec table.
	params merge.Params
	// Notes are remarks for the user (ignored keys and the like).
	Notes []string
	// Vocab, when set, is the merged vocabulary (tokenizer_source other
	// than base, the tokenizer: block, chat_template), built by npsfuse's
	// Python side into the npsfuse_vocabulary key; see vocab.go.
	Vocab *Vocabulary
}

var (
	topKeys = set("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "npsfuse_vocabulary", "scope", "seed", "transposed")
	// topParams are npsfuse's parameters written at the top level.
	topParams = []string{"scope", "seed"}
	modelKeys = set("model", "parameters")
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
	dec := yaml.NewDecoder(bytes.NewReader(text))
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: not valid YAML: %v", ErrConfig, err)
	}
	var more any
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		// mergekit (yaml.safe_load) refuses a stream of several documents too.
		return nil, fmt.Errorf("%w: the file holds more than one YAML document (separated by ---): give one merge config per file, or run named documents that use each other's outputs with `npsfuse multi` (mergekit-multi's format)", ErrConfig)
	}
	top, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the config must be a mapping with merge_method, base_model and models", ErrConfig)
	}
	if err := otherTool(top); err != nil {
		return nil, err
	}
	var bad problems
	c := &Config{}
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
	spec, knownMethod := merge.Spec(c.Method)
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
	_, hasSlices := top["slices"]
	if c.BaseModel == "" && absent(top["base_model"]) && c.Method != "linear" && c.Method != "passthrough" && knownMethod && !hasSlices {
		bad.add("base_model is missing (every method but linear and passthrough needs the pre-trained model)")
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
	values := merge.Values{Global: map[string]any{}}
	for k, v := range gp {
		switch {
		case k == "int8_mask":
			c.Notes = append(c.Notes, "parameters.int8_mask is accepted and ignored: npsfuse keeps masks as it needs them")
		case slices.Contains(topParams, k):
			bad.add("parameters.%s: %s is a top-level key of the config, not a parameter", k, k)
		default:
			values.Global[k] = v
		}
	}
	for _, k := range topParams {
		if v, ok := top[k]; ok {
			values.Global[k] = v
		}
	}
	c.Parameters = gp
	var modelIndex []int // the config's models[i] of each merged model
	// Models.
	list, ok := top["models"].([]any)
	switch _, hasModels := top["models"]; {
	case hasSlices && hasModels:
		bad.add("give either models or slices, not both (mergekit: exactly one of models, slices or modules)")
	case hasSlices:
	case !ok || len(list) == 0:
		bad.add("models must be a non-empty list of {model: PATH, parameters: {...}} (or give slices)")
	}
	skippedBase := 0
	slerpBase := -1
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
		mod := Model{Path: resolve(strAt(m, "model", where+".model", &bad))}
		if mod.Path == "" {
			if absent(m["model"]) { // else not a string, reported by strAt
				bad.add("%s: model is missing", where)
			}
		} else if _, err := os.Stat(mod.Path); err != nil {
			bad.add("%s: model %s does not exist", where, mod.Path)
		}
		own := map[string]any{}
		if pv, ok := m["parameters"]; ok && pv != nil {
			pm, ok := pv.(map[string]any)
			if !ok {
				bad.add("%s.parameters must be a mapping", where)
			}
			for k, v := range pm {
				own[k] = v
			}
			mod.Parameters = pm
		}
		if v, ok := own["statistics"]; ok && v != nil && knownMethod && spec.DataAware {
			at := where + ".parameters.statistics"
			if mod.Statistics = resolve(strAt(own, "statistics", at, &bad)); mod.Statistics != "" {
				if st, err := os.Stat(mod.Statistics); err != nil || st.IsDir() {
					bad.add("%s: %s is not a file", at, mod.Statistics)
				}
			}
		}
		if knownMethod && spec.DataAware && mod.Statistics == "" && mod.Path != "" && mod.Path != c.BaseModel {
			bad.add("%s: %s needs parameters.statistics (the model's statistics file, from npsfuse.stats.save)", where, c.Method)
		}
		// mergekit lets the base model appear among the models; task-vector
		// methods skip it (its task vector is zero). Slerp in mergekit's form
		// lists the base and the other model: the base is its first model
		// (t = 0 gives the base).
		if mod.Path != "" && mod.Path == c.BaseModel && c.Method == "slerp" {
			slerpBase = len(c.Models)
		}
		if mod.Path != "" && mod.Path == c.BaseModel && c.Method != "linear" && c.Method != "slerp" && c.Method != "passthrough" {
			c.Notes = append(c.Notes, fmt.Sprintf("%s is the base model; it is left out of the merge", where))
			skippedBase++
			continue
		}
		c.Models = append(c.Models, mod)
		values.Models = append(values.Models, own)
		modelIndex = append(modelIndex, i)
	}
	if skippedBase > 0 && len(c.Models) == 0 {
		bad.add("models lists only the base model: nothing to merge")
	}
	if slerpBase > 0 { // the base first, as mergekit's v0
		c.Models = append(append([]Model{c.Models[slerpBase]}, c.Models[:slerpBase]...), c.Models[slerpBase+1:]...)
		values.Models = append(append([]map[string]any{values.Models[slerpBase]}, values.Models[:slerpBase]...), values.Models[slerpBase+1:]...)
		modelIndex = append(append([]int{modelIndex[slerpBase]}, modelIndex[:slerpBase]...), modelIndex[slerpBase+1:]...)
	}
	// linear with a base_model not among the models: mergekit averages the
	// base in, as the last model, with the global weight (the spec table's
	// BaseAsModel).
	if spec.BaseAsModel && c.BaseModel != "" && len(c.Models) > 0 && !slices.ContainsFunc(c.Models, func(m Model) bool { return m.Path == c.BaseModel }) {
		c.Models = append(c.Models, Model{Path: c.BaseModel})
		values.Models = append(values.Models, map[string]any{})
		modelIndex = append(modelIndex, -1)
		c.Notes = append(c.Notes, "base_model is not among the models: linear averages it in as the last model, with parameters.weight (as mergekit does)")
	}
	// passthrough passes one model through: mergekit adds a base_model that
	// is not among the models as a second input, and refuses the pair.
	if c.Method == "passthrough" && c.BaseModel != "" && len(c.Models) == 1 && c.Models[0].Path != c.BaseModel {
		bad.add("passthrough takes one model, and base_model %s is another: drop base_model (mergekit merges it in as a second input and refuses)", c.BaseModel)
	}
	if _, hasModels := top["models"]; hasSlices && !hasModels {
		parseSlices(c, top["slices"], values.Global, resolve, &bad)
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
	parseTokenizerKeys(c, top, resolve, &bad)
	if v, ok := top["transposed"]; ok && v != nil {
		l, ok := v.([]any)
		if !ok {
			bad.add("transposed must be a list of tensor-name patterns")
		}
		c.Transposed = []string{} // given: an empty list means none, not the model type's
		for _, p := range l {
			s, ok := p.(string)
			if !ok {
				bad.add("transposed: %v is not a string", p)
				continue
			}
			if err := merge.CheckPattern(s); err != nil {
				bad.add("transposed: %v", err)
			}
			c.Transposed = append(c.Transposed, s)
		}
	}
	if knownMethod && len(c.Models) > 0 && len(c.Slices) == 0 {
		p, problems := merge.Resolve(c.Method, len(c.Models), values)
		for _, msg := range merge.Format(problems, func(param string, model int) string {
			switch {
			case model >= 0 && modelIndex[model] < 0:
				return fmt.Sprintf("base_model's %s (from parameters.%s)", param, param)
			case model >= 0:
				return fmt.Sprintf("models[%d].parameters.%s", modelIndex[model], param)
			case slices.Contains(topParams, param):
				return param
			}
			return "parameters." + param
		}) {
			bad.add("%s", msg)
		}
		c.params = p
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		// "prefix: " then the list: Python maps errors by their "…: " prefix.
		return nil, fmt.Errorf("%w: the config has %s:\n  - %s", ErrConfig, plural(len(bad), "problem"), strings.Join(bad, "\n  - "))
	}
	return c, nil
}

// Params returns the engine's parameters: the method's defaults from the
// spec table, overridden by the config's values (merge.Resolve).
func (c *Config) Params() merge.Params {
	p := c.params
	p.Weights = slices.Clone(p.Weights)
	p.Densities = slices.Clone(p.Densities)
	p.TallLambdas = slices.Clone(p.TallLambdas)
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

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// otherTool recognises a config written for another mergekit command and
// names the npsfuse command that runs it, instead of listing every key the
// merge schema does not know.
func otherTool(top map[string]any) error {
	if _, merge := top["merge_method"]; merge {
		return nil
	}
	if _, ok := top["experts"]; ok {
		return fmt.Errorf("%w: this is a mergekit-moe config (it has experts:): build the mixture of experts with `npsfuse moe CONFIG OUT_DIR`", ErrConfig)
	}
	_, genome := top["genome"]
	_, tasks := top["tasks"]
	if genome || tasks {
		return fmt.Errorf("%w: this is a mergekit-evolve config (it has genome:/tasks:): npsfuse searches merge parameters with `npsfuse search` (or evolves weight sets with `npsfuse evolve`); see docs/cli.md", ErrConfig)
	}
	return nil
}
