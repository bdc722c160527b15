package merge

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Parameter values that vary by tensor, in mergekit's forms: a gradient
// (a list of numbers interpolated over the layers) and a filter list
// ([{filter: self_attn, value: 0.3}, {value: 0.7}]: the first condition
// whose filter is a substring of the tensor's name, or that has none,
// gives the value, itself a number or a gradient).
//
// Which layer a tensor belongs to follows mergekit's plan for models
// merged whole: a tensor of layer i of L layers sits at position
// t = i/(L−1) (t = 1 when L = 1), every other tensor (embeddings, final
// norm, head) at t = 0. Here the layer index is the first dot-separated
// component of the name that is a decimal number (model.layers.3.mlp…,
// transformer.h.3…), and L is one more than the largest index among the
// merge's tensors. A gradient of n points is evaluated as mergekit does, in
// float64: s = t·(n−1), i = ⌊s⌋, (1−f)·v_i + f·v_{i+1} with f = s − i.
//
// Resolve keeps such values in Params.Tensorwise; every merge (Run,
// NewMerger) evaluates them per tensor and merges the tensors that share
// their values together, so each door gets the same per-tensor values.

// Cond is one condition of a Setting: a filter and its value.
type Cond struct {
	// Filter is a substring of the tensor names the condition applies to;
	// "" and "*" apply to every tensor.
	Filter string
	// Values is one number, or a gradient of two or more.
	Values []float64
	// Discrete marks the values of a true/false parameter (1 and 0): a
	// gradient picks one of its points, values[⌊t·(n−1)⌋], as mergekit
	// does for non-numeric values, instead of interpolating.
	Discrete bool
}

// Setting is one parameter's value as written: its conditions in order (a
// number or a gradient is one condition without a filter).
type Setting []Cond

// Varies reports whether the value may differ between tensors.
func (s Setting) Varies() bool {
	for _, c := range s {
		if len(c.Values) > 1 || c.Filter != "" && c.Filter != "*" {
			return true
		}
	}
	return false
}

// Eval returns the value for the tensor named name at layer position t;
// ok is false when no condition applies (the next source then does: the
// global value for a model's own, else the default).
func (s Setting) Eval(name string, t float64) (float64, bool) {
	for _, c := range s {
		if c.Filter != "" && c.Filter != "*" && !strings.Contains(name, c.Filter) {
			continue
		}
		if c.Discrete && len(c.Values) > 0 {
			return c.Values[int(t*float64(len(c.Values)-1))], true
		}
		return gradient(c.Values, t)
	}
	return 0, false
}

// gradient evaluates values at t as mergekit does (see above).
func gradient(v []float64, t float64) (float64, bool) {
	switch len(v) {
	case 0:
		return 0, false
	case 1:
		return v[0], true
	}
	s := t * float64(len(v)-1)
	i0 := int(s)
	i1 := min(len(v)-1, i0+1)
	f := s - float64(i0)
	return (1-f)*v[i0] + f*v[i1], true
}

// TensorSettings are the parameters whose values vary by tensor, as
// written: every source of such a parameter (the global value and each
// model's own, numbers included) is kept, so that the precedence can be
// applied per tensor: a model's own value, else the global one, else the
// default.
type TensorSettings struct {
	// Global are the global values, by parameter name.
	Global map[string]Setting
	// Models are each model's own values, by parameter name.
	Models []map[string]Setting
	// Default is each parameter's default.
	Default map[string]float64
}

// names are the parameters that vary, sorted.
func (ts *TensorSettings) names() []string {
	set := map[string]bool{}
	for k := range ts.Default {
		set[k] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// LayerPositions returns each name's layer position t (see above), in the
// order given.
func LayerPositions(names []string) []float64 {
	idx := make([]int, len(names))
	layers := 0
	for i, n := range names {
		idx[i] = layerIndex(n)
		layers = max(layers, idx[i]+1)
	}
	out := make([]float64, len(names))
	for i, li := range idx {
		switch {
		case li < 0:
			out[i] = 0
		case layers > 1:
			out[i] = float64(li) / float64(layers-1)
		default:
			out[i] = 1
		}
	}
	return out
}

// layerIndex is the first dot-separated decimal component of name, or −1.
func layerIndex(name string) int {
	for part := range strings.SplitSeq(name, ".") {
		if part == "" || strings.Trim(part, "0123456789") != "" {
			continue
		}
		if i, err := strconv.Atoi(part); err == nil {
			return i
		}
	}
	return -1
}

// ForTensor returns p with the varying parameters evaluated for the
// tensor named name at layer position t (Tensorwise cleared).
func (p Params) ForTensor(name string, t float64) Params {
	q, _ := p.forTensor(name, t)
	return q
}

// forTensor is ForTensor that also returns a key of the evaluated values,
// equal for tensors that share them.
func (p Params) forTensor(name string, t float64) (Params, string) {
	ts := p.Tensorwise
	p.Tensorwise = nil
	if ts == nil {
		return p, ""
	}
	var key strings.Builder
	note := func(vals ...float64) {
		for _, v := range vals {
			key.WriteString(strconv.FormatUint(math.Float64bits(v), 16))
			key.WriteByte(',')
		}
		key.WriteByte(';')
	}
	for _, pname := range ts.names() {
		ps := paramSpecs[pname]
		def := ts.Default[pname]
		global, gok := ts.Global[pname].Eval(name, t)
		if ps.PerModel == Global {
			if !gok {
				global = def
			}
			ps.set(&p, []float64{global}, false)
			note(global)
			continue
		}
		vals := make([]float64, len(ts.Models))
		for m := range vals {
			var own Setting
			if ts.Models[m] != nil {
				own = ts.Models[m][pname]
			}
			switch v, ok := own.Eval(name, t); {
			case ok:
				vals[m] = v
			case gok:
				vals[m] = global
			default:
				vals[m] = def
			}
		}
		ps.set(&p, vals, true)
		note(vals...)
	}
	return p, key.String()
}

// parseSetting reads a raw value (a number, a list of numbers, a mapping
// {filter, value} or a list of them) into a Setting; leaf converts and
// checks one number (adding its own problem when it returns false).
func parseSetting(raw any, leaf func(any) (float64, bool), discrete bool) (Setting, string) {
	if m, ok := raw.(map[string]any); ok {
		raw = []any{m}
	}
	list, ok := raw.([]any)
	if !ok {
		x, ok := leaf(raw)
		if !ok {
			return nil, "-"
		}
		return Setting{{Values: []float64{x}, Discrete: discrete}}, ""
	}
	if len(list) == 0 {
		return nil, "must not be an empty list"
	}
	conds := false
	for _, e := range list {
		if _, ok := e.(map[string]any); ok {
			conds = true
		}
	}
	if !conds {
		vals, bad := numbers(list, leaf)
		if bad != "" {
			return nil, bad
		}
		return Setting{{Values: vals, Discrete: discrete}}, ""
	}
	var s Setting
	for i, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Sprintf("mixes numbers and {filter, value} conditions (entry %d is %v)", i, e)
		}
		c := Cond{Discrete: discrete}
		for k := range m {
			if k != "filter" && k != "value" {
				return nil, fmt.Sprintf("condition %d: unknown key %q (known: filter, value)", i, k)
			}
		}
		if f, ok := m["filter"]; ok && f != nil {
			str, ok := f.(string)
			if !ok {
				return nil, fmt.Sprintf("condition %d: filter must be a string, got %v", i, f)
			}
			c.Filter = str
		}
		v, ok := m["value"]
		if !ok || v == nil {
			return nil, fmt.Sprintf("condition %d has no value", i)
		}
		if l, isList := v.([]any); isList {
			vals, bad := numbers(l, leaf)
			if bad != "" {
				return nil, fmt.Sprintf("condition %d: %s", i, bad)
			}
			c.Values = vals
		} else {
			x, ok := leaf(v)
			if !ok {
				return nil, "-"
			}
			c.Values = []float64{x}
		}
		s = append(s, c)
	}
	return s, ""
}

// numbers reads a gradient's points.
func numbers(list []any, leaf func(any) (float64, bool)) ([]float64, string) {
	if len(list) == 0 {
		return nil, "has an empty gradient"
	}
	vals := make([]float64, len(list))
	for i, e := range list {
		switch e.(type) {
		case []any, map[string]any:
			return nil, fmt.Sprintf("gradient point %d must be a number, got %v", i, e)
		}
		x, ok := leaf(e)
		if !ok {
			return nil, "-"
		}
		vals[i] = x
	}
	return vals, ""
}

// jsonNumber converts a json.Number (values from Python's JSON) as YAML
// gives numbers: int for whole numbers, uint64 above 2⁶³ (a seed), else
// float64.
func jsonNumber(n json.Number) any {
	if i, err := n.Int64(); err == nil {
		return int(i)
	}
	if u, err := strconv.ParseUint(n.String(), 10, 64); err == nil {
		return u
	}
	if f, err := n.Float64(); err == nil {
		return f
	}
	return n.String()
}
