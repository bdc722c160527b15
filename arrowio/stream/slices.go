package stream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/plan"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// A `slices:` config (mergekit's frankenmerges) stacks layer ranges of
// several models; each slice merges its sources' layers with the config's
// method (or its own merge_method, npsfuse's extension: mergekit 0.1.5
// has one method per config and ignores the key) and parameters. Which
// output tensor comes from which source tensors is gocore/plan's Slices;
// here each group of output tensors is planned (plan.Make) and merged as
// a merge of its own, tensor by tensor, so memory stays that of the
// largest tensor whatever the model's size.

// Slice is one entry of the config's slices list.
type Slice struct {
	// Method is the slice's merge method: its merge_method, else the
	// config's.
	Method string
	// BaseModel is the slice's base: its base_model, else the config's
	// ("" for none).
	BaseModel string
	Sources   []Source
	// Parameters are the slice's parameters as written.
	Parameters map[string]any
	// values are the parameters that apply (the config's, then the
	// slice's on top); own are each source's.
	values map[string]any
	own    []map[string]any
}

// Source is one source of a slice: a model and its layers [Start, End).
type Source struct {
	Path       string
	Start, End int
	Parameters map[string]any
}

// sliceMerge is how a slice merges some of its sources: the source that
// is the base (-1: none, the first source lays the output out) and the
// merged models, both as indices into Slice.Sources, and the parameters.
type sliceMerge struct {
	base   int
	models []int
	params merge.Params
}

var (
	sliceKeys  = set("sources", "base_model", "parameters", "merge_method", "residual_weight")
	sourceKeys = set("model", "layer_range", "parameters")
)

// parseSlices reads top["slices"] into c.Slices and lists every model
// they read in c.Models (once each, in order of appearance). global are
// the config's parameters.
func parseSlices(c *Config, raw any, global map[string]any, resolve func(string) string, bad *problems) {
	list, ok := raw.([]any)
	if !ok || len(list) == 0 {
		bad.add("slices must be a non-empty list of {sources: [{model: PATH, layer_range: [START, END]}, ...]}")
		return
	}
	seen := map[string]bool{}
	for i, item := range list {
		where := fmt.Sprintf("slices[%d]", i)
		m, ok := item.(map[string]any)
		if !ok {
			bad.add("%s must be a mapping with a sources key", where)
			c.Slices = append(c.Slices, Slice{}) // keeps the indices of the next ones
			continue
		}
		for k := range m {
			if !sliceKeys[k] {
				bad.add("%s: unknown key %q (known: %s)", where, k, keys(sliceKeys))
			}
		}
		s := Slice{Method: c.Method, BaseModel: c.BaseModel}
		if v, ok := m["merge_method"]; ok && v != nil {
			s.Method = strAt(m, "merge_method", where+".merge_method", bad)
			if _, ok := merge.Lookup(s.Method); !ok && s.Method != "" {
				bad.add("%s: unknown merge_method %q (valid: %s)", where, s.Method, strings.Join(merge.Methods(), ", "))
			}
		}
		if v, ok := m["base_model"]; ok && v != nil {
			if s.BaseModel = resolve(strAt(m, "base_model", where+".base_model", bad)); s.BaseModel != "" {
				if _, err := os.Stat(s.BaseModel); err != nil {
					bad.add("%s: base_model %s does not exist", where, s.BaseModel)
				}
			}
		}
		if _, ok := m["residual_weight"]; ok {
			c.Notes = append(c.Notes, where+".residual_weight is accepted and ignored, as mergekit 0.1.5 does")
		}
		spec, _ := merge.Spec(s.Method)
		s.values = map[string]any{}
		for k, v := range global {
			// A slice with its own method takes the config's parameters
			// that method reads; the others are the other slices'.
			if s.Method == c.Method || spec.Reads(k) {
				s.values[k] = v
			}
		}
		if pv, ok := m["parameters"]; ok && pv != nil {
			pm, ok := pv.(map[string]any)
			if !ok {
				bad.add("%s.parameters must be a mapping", where)
			}
			for k, v := range pm {
				switch {
				case k == "int8_mask":
				case slices.Contains(topParams, k):
					bad.add("%s.parameters.%s: %s is a top-level key of the config, not a parameter", where, k, k)
				default:
					s.values[k] = v
				}
			}
			s.Parameters = pm
		}
		srcs, ok := m["sources"].([]any)
		if !ok || len(srcs) == 0 {
			bad.add("%s: sources must be a non-empty list of {model: PATH, layer_range: [START, END]}", where)
		}
		for j, sv := range srcs {
			at := fmt.Sprintf("%s.sources[%d]", where, j)
			src, ok := parseSource(sv, at, resolve, bad)
			if !ok {
				continue
			}
			for k, prev := range s.Sources {
				if prev.Path == src.Path && src.Path != "" {
					bad.add("%s: model %s is already %s.sources[%d]; a slice takes each model once (mergekit refuses duplicate inputs)", at, src.Path, where, k)
				}
			}
			s.Sources = append(s.Sources, src)
			s.own = append(s.own, nonNil(src.Parameters))
			if src.Path != "" && !seen[src.Path] {
				seen[src.Path] = true
				c.Models = append(c.Models, Model{Path: src.Path})
			}
		}
		for j, src := range s.Sources {
			if l, l0 := src.End-src.Start, s.Sources[0].End-s.Sources[0].Start; j > 0 && l > 0 && l0 > 0 && l != l0 {
				bad.add("%s.sources[%d]: layer_range [%d, %d] spans %d layers but %s.sources[0] spans %d; every source of a slice must span the same number of layers (mergekit: \"All inputs to a slice must contain the same number of layers\")",
					where, j, src.Start, src.End, l, where, l0)
			}
		}
		c.Slices = append(c.Slices, s)
		if len(s.Sources) == len(srcs) && len(s.Sources) > 0 {
			if _, msgs := c.sliceMerge(i, nil); len(msgs) > 0 {
				for _, msg := range msgs {
					bad.add("%s", msg)
				}
			}
		}
	}
	// With a method in every slice, a parameter of the config that none of
	// them reads would be dropped without a word.
	if slices.ContainsFunc(c.Slices, func(s Slice) bool { return s.Method == c.Method }) {
		return
	}
	var methods []string
	for _, s := range c.Slices {
		if !slices.Contains(methods, s.Method) {
			methods = append(methods, s.Method)
		}
	}
	for k := range global {
		if !slices.ContainsFunc(methods, func(m string) bool { sp, _ := merge.Spec(m); return sp.Reads(k) }) {
			bad.add("parameters.%s is not used by the slices' methods (%s)", k, strings.Join(methods, ", "))
		}
	}
}

// nonNil returns m, or an empty map for nil.
func nonNil(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// parseSource reads one source of a slice.
func parseSource(raw any, at string, resolve func(string) string, bad *problems) (Source, bool) {
	m, ok := raw.(map[string]any)
	if !ok {
		bad.add("%s must be a mapping with model and layer_range", at)
		return Source{}, false
	}
	for k := range m {
		if !sourceKeys[k] {
			bad.add("%s: unknown key %q (known: %s)", at, k, keys(sourceKeys))
		}
	}
	src := Source{Path: resolve(strAt(m, "model", at+".model", bad))}
	if src.Path == "" {
		if absent(m["model"]) {
			bad.add("%s: model is missing", at)
		}
	} else if _, err := os.Stat(src.Path); err != nil {
		bad.add("%s: model %s does not exist", at, src.Path)
	}
	r, ok := m["layer_range"].([]any)
	var ends [2]int
	valid := ok && len(r) == 2
	for k := 0; valid && k < 2; k++ {
		switch x := r[k].(type) {
		case int:
			ends[k] = x
		case float64:
			if x != float64(int(x)) {
				valid = false
			}
			ends[k] = int(x)
		default:
			valid = false
		}
	}
	switch {
	case absent(m["layer_range"]):
		bad.add("%s: layer_range is missing ([START, END]: the layers START to END−1 of the model)", at)
	case !valid:
		bad.add("%s: layer_range must be two whole numbers [START, END], got %v", at, m["layer_range"])
	case ends[0] < 0 || ends[1] <= ends[0]:
		bad.add("%s: layer_range [%d, %d] is empty or negative: it takes the layers START to END−1, so 0 ≤ START < END", at, ends[0], ends[1])
	}
	src.Start, src.End = ends[0], ends[1]
	if pv, ok := m["parameters"]; ok && pv != nil {
		pm, ok := pv.(map[string]any)
		if !ok {
			bad.add("%s.parameters must be a mapping", at)
		}
		src.Parameters = pm
	}
	return src, true
}

// sliceMerge decides how slice s merges the sources listed in subset (nil:
// all): which one is the base, which are merged, with what parameters. Its
// messages name the slice and source.
func (c *Config) sliceMerge(s int, subset []int) (sliceMerge, []string) {
	sl := &c.Slices[s]
	where := fmt.Sprintf("slices[%d]", s)
	if subset == nil {
		subset = make([]int, len(sl.Sources))
		for k := range subset {
			subset[k] = k
		}
	}
	var bad []string
	spec, known := merge.Spec(sl.Method)
	if !known {
		return sliceMerge{}, nil // reported by the parser
	}
	sm := sliceMerge{base: -1}
	switch {
	case spec.DataAware:
		return sm, []string{fmt.Sprintf("%s: %s needs each model's statistics, which slices do not take: merge the models whole", where, sl.Method)}
	case sl.Method == "linear" || sl.Method == "passthrough":
		sm.models = subset // no base: the first source lays the output out
	default:
		if sl.BaseModel == "" {
			return sm, []string{fmt.Sprintf("%s: %s needs a base model: set base_model (for the config or the slice) and list it among the slice's sources", where, sl.Method)}
		}
		for _, k := range subset {
			if sl.Sources[k].Path == sl.BaseModel {
				sm.base = k
			} else {
				sm.models = append(sm.models, k)
			}
		}
		if sm.base < 0 {
			return sm, []string{fmt.Sprintf("%s: base_model %s is not among the slice's sources: %s reads the base's layers from a source, so list it with a layer_range like the others' (mergekit: \"Base input is not present\")", where, sl.BaseModel, sl.Method)}
		}
		if sl.Method == "slerp" { // the base is slerp's first model (t = 0 gives it)
			sm.models = append([]int{sm.base}, sm.models...)
		}
	}
	values := merge.Values{Global: sl.values}
	for _, k := range sm.models {
		values.Models = append(values.Models, sl.own[k])
	}
	p, problems := merge.Resolve(sl.Method, len(sm.models), values)
	bad = append(bad, merge.Format(problems, func(param string, model int) string {
		switch {
		case model >= 0:
			return fmt.Sprintf("%s.sources[%d].parameters.%s", where, sm.models[model], param)
		case slices.Contains(topParams, param):
			return param
		case sl.Parameters[param] != nil:
			return where + ".parameters." + param
		}
		return "parameters." + param
	})...)
	for i, msg := range bad {
		if !strings.HasPrefix(msg, where) {
			bad[i] = where + " (" + sl.Method + "): " + msg
		}
	}
	sm.params = p
	return sm, bad
}

// cardSlices is the slices of cfg as the model card writes them.
func cardSlices(cfg *Config) []map[string]any {
	out := make([]map[string]any, len(cfg.Slices))
	for i, s := range cfg.Slices {
		srcs := make([]map[string]any, len(s.Sources))
		for j, src := range s.Sources {
			srcs[j] = map[string]any{"model": src.Path, "layer_range": []int{src.Start, src.End}}
			if len(src.Parameters) > 0 {
				srcs[j]["parameters"] = src.Parameters
			}
		}
		out[i] = map[string]any{"sources": srcs}
		if s.Method != cfg.Method {
			out[i]["merge_method"] = s.Method
		}
		if s.BaseModel != cfg.BaseModel {
			out[i]["base_model"] = s.BaseModel
		}
		if len(s.Parameters) > 0 {
			out[i]["parameters"] = s.Parameters
		}
	}
	return out
}

// opened are a run's checkpoints by path.
type opened map[string]*checkpoint.Checkpoint

// planSlices lays out the jobs of a slices merge: for every group of
// output tensors (gocore/plan.Slices) a plan of its own and a Merger (one
// per tensor when parameters vary by tensor: they are evaluated at the
// tensor's position in its slice). It returns the output's layer count.
// vp, when set, gives the vocabulary tensors in the merged vocabulary,
// with the defaults npsfuse_vocabulary gives for their group.
func planSlices(cfg *Config, opt Options, ck opened, outDT tensor.DType, modelType string, vp *vocabPlan, res *Result) ([]job, []*merge.Merger, int, error) {
	var inputs []plan.Input
	index := map[string]int{}
	spec := make([][]plan.SliceSource, len(cfg.Slices))
	for s, sl := range cfg.Slices {
		for k, src := range sl.Sources {
			i, ok := index[src.Path]
			if !ok {
				i = len(inputs)
				index[src.Path] = i
				inputs = append(inputs, vp.planInput(ck[src.Path]))
			}
			spec[s] = append(spec[s], plan.SliceSource{Input: i, Start: src.Start, End: src.End, Where: fmt.Sprintf("slices[%d].sources[%d]", s, k)})
		}
	}
	groups, layers, msgs := plan.Slices(inputs, spec)
	if len(msgs) > 0 {
		return nil, nil, 0, fmt.Errorf("%w: the slices do not fit the models (%s):\n  - %s", ErrInput, plural(len(msgs), "problem"), strings.Join(msgs, "\n  - "))
	}
	var jobs []job
	var mergers []*merge.Merger
	for _, g := range groups {
		sl := cfg.Slices[g.Slice]
		sm, bad := cfg.sliceMerge(g.Slice, g.Sources)
		if len(bad) > 0 { // only a cut source list can fail here: the parser checked the others
			return nil, nil, 0, fmt.Errorf("%w: the tensors after the layers (%s) come from the last slice's first %d sources, as in mergekit: %s",
				ErrConfig, g.Part, len(g.Sources), strings.Join(bad, "; "))
		}
		sm.params.Pool = parallel.Pool{Threads: opt.Threads}        // travels with this run only
		at := func(k int) int { return slices.Index(g.Sources, k) } // a slice's source → its place in g
		set, where := vp.sliceSet(g.Slice, g.Sources), fmt.Sprintf("the %s of slices[%d] (sources %v)", g.Part, g.Slice, g.Sources)
		src := func(k int) source {
			return source{c: ck[sl.Sources[k].Path], from: g.From[at(k)], vocab: vp, set: set, where: where}
		}
		var base source
		var baseIn plan.Input
		if sm.base >= 0 {
			base, baseIn = src(sm.base), g.Inputs[at(sm.base)]
		} else {
			base, baseIn = src(sm.models[0]), g.Inputs[at(sm.models[0])]
		}
		models := make([]source, len(sm.models))
		modelIns := make([]plan.Input, len(sm.models))
		for i, k := range sm.models {
			models[i], modelIns[i] = src(k), g.Inputs[at(k)]
		}
		po := plan.Options{Transposed: cfg.Transposed, ModelType: modelType, AllowMissing: opt.AllowMissing,
			MissingOption: "--allow-missing", NoBase: sm.base < 0}
		if outDT != 0 {
			po.OutDType = checkpoint.FromKernel(outDT).String()
		}
		p, err := plan.Make(baseIn, modelIns, po)
		if err != nil {
			return nil, nil, 0, err
		}
		gj, tensors, err := jobsOf(p, base, models, res)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("%s of slices[%d] (%s): %w", g.Part, g.Slice, sl.Method, err)
		}
		if len(tensors) > 0 && sm.params.Tensorwise != nil {
			// One Merger per tensor, at its position in the slice.
			byName := make(map[string]int, len(tensors))
			for i, t := range tensors {
				m, err := merge.NewMerger(sl.Method, sm.params.ForTensor(t.Name, g.Position[t.Name]), []merge.Tensor{t})
				if err != nil {
					return nil, nil, 0, fmt.Errorf("slices[%d]: %w", g.Slice, err)
				}
				byName[t.Name] = i
				mergers = append(mergers, m)
			}
			first := len(mergers) - len(tensors)
			for i := range gj {
				if gj[i].merged >= 0 {
					gj[i].merger, gj[i].merged = mergers[first+byName[gj[i].info.Name]], 0
				}
			}
		} else if len(tensors) > 0 {
			m, err := merge.NewMerger(sl.Method, sm.params, tensors)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("slices[%d]: %w", g.Slice, err)
			}
			mergers = append(mergers, m)
			for i := range gj {
				if gj[i].merged >= 0 {
					gj[i].merger = m
				}
			}
		}
		jobs = append(jobs, gj...)
	}
	slices.SortFunc(jobs, func(a, b job) int { return strings.Compare(a.info.Name, b.info.Name) })
	for i := 1; i < len(jobs); i++ {
		if jobs[i].info.Name == jobs[i-1].info.Name { // a model naming a layer tensor like an embedding
			return nil, nil, 0, fmt.Errorf("%w: tensor %q is made twice by the slices", ErrInput, jobs[i].info.Name)
		}
	}
	return jobs, mergers, layers, nil
}

// joinReports joins the Mergers' reports: maps by tensor name are joined,
// other values replaced.
func joinReports(ms []*merge.Merger) map[string]any {
	out := map[string]any{}
	for _, m := range ms {
		for k, v := range m.Report() {
			switch x := v.(type) {
			case map[string]float64:
				if d, ok := out[k].(map[string]float64); ok {
					for n, f := range x {
						d[n] = f
					}
					continue
				}
			case map[string]bool:
				if d, ok := out[k].(map[string]bool); ok {
					for n, f := range x {
						d[n] = f
					}
					continue
				}
			}
			out[k] = v
		}
	}
	return out
}

// layerKeys are config.json's keys of the layer count, as transformers'
// model families name it.
var layerKeys = []string{"num_hidden_layers", "n_layer", "num_layers"}

// setLayerCount writes the output's layer count into dir's config.json
// (every key of layerKeys it holds; a missing config.json is not an
// error), as mergekit does for a slices merge.
func setLayerCount(dir string, layers int) error {
	return editConfigJSON(dir, func(cfg map[string]any) {
		for _, k := range layerKeys {
			if _, ok := cfg[k]; ok {
				cfg[k] = layers
			}
		}
	})
}

// editConfigJSON rewrites dir's config.json with edit applied (numbers kept
// as written; a missing config.json is not an error).
func editConfigJSON(dir string, edit func(cfg map[string]any)) error {
	path := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var cfg map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	edit(cfg)
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}
