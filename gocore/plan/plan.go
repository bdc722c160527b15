// Package plan matches a merge's inputs, once for every door: given the
// base's and each model's tensor lists (name, dtype, shape) it decides, per
// output tensor, whether the engine merges it or copies it from the base,
// and lists every input that does not fit, naming the tensor and the model
// and saying how to fix it. npsfuse.merge (through pybind), `npsfuse merge`
// and both daemon merge jobs (arrowio/stream, daemon/jobs) call it, so the
// same inputs are refused with the same words everywhere.
//
// The rules:
//   - F32, F16 and BF16 tensors are merged; every model must hold the
//     tensor with the base's shape and one of those three dtypes.
//   - Integer and boolean tensors (position ids, masks, counters) are
//     copied from the base; every model must hold them with the base's
//     dtype, shape and values. The values are compared by the door (it has
//     the bytes): entries marked Verify, reported with Plan.Differ.
//   - Other dtypes (F64, C64, 8-bit floats, ...) are refused.
//   - A tensor a model lacks is an error, unless AllowMissing: then the
//     base's tensor is kept and a note says so. A model's tensor the base
//     lacks is an error.
//
// The package works on metadata only: it reads no tensor data and imports
// neither Arrow nor safetensors. Dtypes are safetensors' names ("F32",
// "I64", "BOOL").
package plan

import (
	"fmt"
	"slices"
	"strings"

	"github.com/npsfuse/npsfuse/gocore/merge"
)

// Tensor describes one input tensor.
type Tensor struct {
	Name  string  `json:"name"`
	DType string  `json:"dtype"` // safetensors name: F32, BF16, I64, BOOL, ...
	Shape []int64 `json:"shape"`
	// File is where the tensor is stored (a shard), named in messages
	// about it; "" names the input's Where.
	File string `json:"file,omitempty"`
}

// Input is one model's (or the base's) tensor list.
type Input struct {
	// Where names the input in messages (a path), "" for none.
	Where   string   `json:"where,omitempty"`
	Tensors []Tensor `json:"tensors"`
}

// Options are a door's choices.
type Options struct {
	// Transposed are the patterns of weights stored (in, out)
	// (merge.MatchTransposed); nil: those of ModelType.
	Transposed []string `json:"transposed"`
	ModelType  string   `json:"model_type,omitempty"`
	// AllowMissing keeps the base's tensor where a model lacks it.
	AllowMissing bool `json:"allow_missing,omitempty"`
	// MissingOption is the door's name of AllowMissing ("--allow-missing",
	// "allow_missing"), suggested when a tensor is missing; "" for none.
	MissingOption string `json:"missing_option,omitempty"`
	// OutDType is the dtype of merged tensors ("": each keeps the base's).
	OutDType string `json:"out_dtype,omitempty"`
	// NoBase says that the method merges without a base (linear): the
	// first model lays the output out and is named "model 0".
	NoBase bool `json:"no_base,omitempty"`
}

// Action says how an output tensor is made.
type Action uint8

const (
	// Merge: the engine merges the models' tensors.
	Merge Action = iota
	// Copy: the base's tensor is copied (converted to DType if it differs
	// from BaseDType).
	Copy
)

// String is the action's JSON name.
func (a Action) String() string {
	if a == Copy {
		return "copy"
	}
	return "merge"
}

// MarshalText names the action in JSON.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Entry is one output tensor.
type Entry struct {
	Name      string  `json:"name"`
	Action    Action  `json:"action"`
	DType     string  `json:"dtype"`      // the output's dtype
	BaseDType string  `json:"base_dtype"` // the base's dtype
	Shape     []int64 `json:"shape"`
	// Transposed: a 2-D weight stored (in, out) under the patterns.
	Transposed bool `json:"transposed,omitempty"`
	// Merged is the tensor's index among the merged ones (in name order),
	// -1 for a copy.
	Merged int `json:"merged"`
	// Verify: an integer or boolean tensor; the door compares the values
	// of every model that holds it with the base's and reports those that
	// differ with Plan.Differ.
	Verify bool `json:"verify,omitempty"`
	// Order is the tensor's position in the base's list.
	Order int `json:"order"`
}

// Kind classifies a problem.
type Kind string

// The kinds of problems.
const (
	Missing Kind = "missing" // a tensor of the base is missing from a model
	Extra   Kind = "extra"   // a model has a tensor the base lacks
	Prefix  Kind = "prefix"  // a model's names are the base's with a prefix added or removed
	Shape   Kind = "shape"   // shapes differ
	DType   Kind = "dtype"   // a dtype that cannot be merged or copied
	Values  Kind = "values"  // an integer tensor's values differ
)

// Problem is one reason the inputs do not fit together.
type Problem struct {
	Kind   Kind   `json:"kind"`
	Tensor string `json:"tensor"`
	Model  int    `json:"model"` // -1: the base
	Text   string `json:"text"`
}

// Plan is the matching's outcome.
type Plan struct {
	// Entries are the output tensors in tensor-name order.
	Entries []Entry `json:"entries"`
	// Notes say what was decided that the user may not expect.
	Notes    []string  `json:"notes"`
	Problems []Problem `json:"problems"`
	// Transposed are the patterns applied.
	Transposed []string `json:"transposed"`

	base   Input
	models []Input
	held   []map[string]Tensor // each model's tensors by name
	names  []string            // how messages name the base and each model
}

// MaxListed is how many problems an error lists.
const MaxListed = 20

// mergeable are the dtypes the engine merges.
var mergeable = map[string]bool{"F32": true, "F16": true, "BF16": true}

// copied are the integer and boolean dtypes copied from the base.
var copied = map[string]bool{"BOOL": true, "U8": true, "I8": true, "I16": true, "U16": true,
	"I32": true, "U32": true, "I64": true, "U64": true}

// IsFloat reports whether the engine merges tensors of dtype d.
func IsFloat(d string) bool { return mergeable[d] }

// Make matches models against base. A malformed option is an error; inputs
// that do not fit are listed in the plan's Problems (Err reports them).
func Make(base Input, models []Input, opt Options) (*Plan, error) {
	for _, p := range opt.Transposed {
		if err := merge.CheckPattern(p); err != nil {
			return nil, fmt.Errorf("%w: transposed: %v", merge.ErrInput, err)
		}
	}
	if opt.OutDType != "" && !mergeable[opt.OutDType] {
		return nil, fmt.Errorf("%w: output dtype %s: merged tensors are F32, F16 or BF16", merge.ErrInput, opt.OutDType)
	}
	if len(models) == 0 {
		return nil, fmt.Errorf("%w: no models to merge", merge.ErrInput)
	}
	p := &Plan{Entries: []Entry{}, Notes: []string{}, Problems: []Problem{}, base: base, models: models}
	p.names = []string{"the base"}
	if opt.NoBase {
		p.base, p.names[0] = models[0], "model 0"
	}
	for i := range models {
		p.names = append(p.names, fmt.Sprintf("model %d", i))
	}
	p.Transposed = merge.TransposedPatterns(opt.Transposed, opt.ModelType)
	if opt.Transposed == nil && len(p.Transposed) > 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("model_type %s: %s are treated as stored (in, out)", opt.ModelType, strings.Join(p.Transposed, ", ")))
	}
	p.held = make([]map[string]Tensor, len(models))
	for i, m := range models {
		p.held[i] = make(map[string]Tensor, len(m.Tensors))
		for _, t := range m.Tensors {
			p.held[i][t.Name] = t
		}
	}
	order := make(map[string]int, len(p.base.Tensors))
	for i, t := range p.base.Tensors {
		order[t.Name] = i
	}
	sorted := slices.Clone(p.base.Tensors)
	slices.SortFunc(sorted, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	missing := make([][]string, len(models))
	merged := 0
	for _, b := range sorted {
		e, ok := p.entry(b, missing, opt)
		if !ok {
			continue
		}
		e.Order = order[b.Name]
		if e.Action == Merge {
			e.Merged, merged = merged, merged+1
		}
		p.Entries = append(p.Entries, e)
	}
	for i, names := range missing {
		if len(names) > 0 {
			text := fmt.Sprintf("tensor %q is missing from %s%s", names[0], p.where(i, ""), more(len(names)))
			if opt.MissingOption != "" {
				text += "; " + opt.MissingOption + " keeps the base's"
			}
			p.Problems = append(p.Problems, Problem{Kind: Missing, Tensor: names[0], Model: i, Text: text})
		}
	}
	for i, m := range models {
		var extra []Tensor
		for _, t := range m.Tensors {
			if _, ok := order[t.Name]; !ok {
				extra = append(extra, t)
			}
		}
		if len(extra) > 0 {
			slices.SortFunc(extra, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
			if hint := prefixHint(missing[i], extra, p.where(i, "")); hint != "" {
				p.Problems = append(p.Problems, Problem{Kind: Prefix, Model: i, Text: hint}) // no tensor: listed first
			}
			t := extra[0]
			p.Problems = append(p.Problems, Problem{Kind: Extra, Tensor: t.Name, Model: i,
				Text: fmt.Sprintf("tensor %q of %s is not in %s%s", t.Name, p.where(i, t.File), p.names[0], more(len(extra)))})
		}
	}
	p.sortProblems()
	return p, nil
}

// entry plans base tensor b; ok is false when it cannot be made.
func (p *Plan) entry(b Tensor, missing [][]string, opt Options) (Entry, bool) {
	e := Entry{Name: b.Name, DType: b.DType, BaseDType: b.DType, Shape: b.Shape, Merged: -1}
	isInt := copied[b.DType]
	if !isInt && !mergeable[b.DType] {
		p.add(DType, b.Name, -1, fmt.Sprintf("tensor %q has dtype %s in %s; npsfuse merges F32, F16 and BF16 tensors and copies integer and boolean ones: convert it",
			b.Name, b.DType, p.where(-1, b.File)))
		return e, false
	}
	ok, lacking := true, -1
	for i := range p.held {
		t, found := p.held[i][b.Name]
		switch {
		case !found:
			if lacking < 0 {
				lacking = i
			}
			if !opt.AllowMissing {
				missing[i] = append(missing[i], b.Name)
				ok = false
			}
		case !slices.Equal(t.Shape, b.Shape):
			p.add(Shape, b.Name, i, fmt.Sprintf("tensor %q has shape %s in %s but %s in %s",
				b.Name, FormatShape(t.Shape), p.where(i, t.File), FormatShape(b.Shape), p.where(-1, b.File)))
			ok = false
		case isInt && t.DType != b.DType:
			p.add(DType, b.Name, i, fmt.Sprintf("tensor %q has dtype %s in %s but %s in %s; integer and boolean tensors are copied from the base, so every model must hold the same dtype, shape and values",
				b.Name, t.DType, p.where(i, t.File), b.DType, p.names[0]))
			ok = false
		case !isInt && !mergeable[t.DType]:
			p.add(DType, b.Name, i, fmt.Sprintf("tensor %q has dtype %s in %s but %s in %s; a merged tensor must be F32, F16 or BF16 in every model",
				b.Name, t.DType, p.where(i, t.File), b.DType, p.names[0]))
			ok = false
		}
	}
	if !ok {
		return e, false
	}
	if lacking >= 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("tensor %q is missing from %s: the base's tensor is kept", b.Name, p.where(lacking, "")))
	}
	switch {
	case isInt:
		e.Action, e.Verify = Copy, true
	case lacking >= 0:
		e.Action = Copy
		if opt.OutDType != "" {
			e.DType = opt.OutDType
		}
	default:
		if opt.OutDType != "" {
			e.DType = opt.OutDType
		}
		shape := make([]int, len(b.Shape))
		for k, d := range b.Shape {
			shape[k] = int(d)
		}
		e.Transposed = merge.IsTransposed(b.Name, shape, p.Transposed)
	}
	return e, true
}

// Verify compares the values of each integer tensor (the entries marked
// Verify) in every model that holds it with the base's by calling equal,
// and reports those that differ (Differ). An error of equal is returned.
func (p *Plan) Verify(equal func(name string, model int) (bool, error)) error {
	for _, e := range p.Entries {
		for i := range p.held {
			if _, ok := p.held[i][e.Name]; !e.Verify || !ok {
				continue
			}
			same, err := equal(e.Name, i)
			if err != nil {
				return err
			}
			if !same {
				p.Differ(e.Name, i)
			}
		}
	}
	return nil
}

// Differ reports that model's values of the integer tensor name differ
// from the base's (an entry marked Verify).
func (p *Plan) Differ(name string, model int) {
	t := p.held[model][name]
	p.add(Values, name, model, fmt.Sprintf("tensor %q (%s) differs between %s and %s; integer and boolean tensors are copied from the base, so every model must hold the same dtype, shape and values",
		name, t.DType, p.names[0], p.where(model, t.File)))
	p.sortProblems()
}

// Err is nil when the inputs fit together, else an error wrapping
// merge.ErrInput that lists the problems (at most MaxListed).
func (p *Plan) Err() error {
	if len(p.Problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", merge.ErrInput, p.Message())
}

// Message lists the problems, as Err does, without the prefix.
func (p *Plan) Message() string {
	lines := make([]string, 0, min(len(p.Problems), MaxListed)+1)
	for i, pr := range p.Problems {
		if i == MaxListed {
			lines = append(lines, fmt.Sprintf("… and %d more", len(p.Problems)-MaxListed))
			break
		}
		lines = append(lines, pr.Text)
	}
	n := len(p.Problems)
	s := "s"
	if n == 1 {
		s = ""
	}
	return fmt.Sprintf("the models do not fit together (%d problem%s):\n  - %s", n, s, strings.Join(lines, "\n  - "))
}

// Merged returns the entries the engine merges, in name order (an entry's
// Merged is its index here).
func (p *Plan) Merged() []Entry {
	var out []Entry
	for _, e := range p.Entries {
		if e.Action == Merge {
			out = append(out, e)
		}
	}
	return out
}

// InBaseOrder returns the entries in the order of the base's list.
func (p *Plan) InBaseOrder() []Entry {
	out := slices.Clone(p.Entries)
	slices.SortFunc(out, func(a, b Entry) int { return a.Order - b.Order })
	return out
}

func (p *Plan) add(k Kind, tensor string, model int, text string) {
	p.Problems = append(p.Problems, Problem{Kind: k, Tensor: tensor, Model: model, Text: text})
}

// sortProblems orders problems by tensor name, then model.
func (p *Plan) sortProblems() {
	slices.SortStableFunc(p.Problems, func(a, b Problem) int {
		if c := strings.Compare(a.Tensor, b.Tensor); c != 0 {
			return c
		}
		return a.Model - b.Model
	})
}

// where names model i (-1: the base) and, in parentheses, file or the
// input's Where.
func (p *Plan) where(i int, file string) string {
	name, in := p.names[i+1], p.base
	if i >= 0 {
		in = p.models[i]
	}
	if file == "" {
		file = in.Where
	}
	if file == "" {
		return name
	}
	return name + " (" + file + ")"
}

func more(n int) string {
	if n <= 1 {
		return ""
	}
	return fmt.Sprintf(" (and %d more)", n-1)
}

// FormatShape writes a shape as the messages do: [64 48], [] for a scalar.
func FormatShape(s []int64) string { return fmt.Sprint(s) }
