package stream

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Statistics are the statistics files of a data-aware merge, mapped for
// its duration.
type Statistics struct {
	// Notes are remarks for the user (statistics that were not used).
	Notes []string
	// Bytes are, per merged tensor, the mapped bytes of its statistics in
	// each file (what the merge reads), for read-ahead and release.
	Bytes map[string][][]byte
	files []*safetensors.File
}

// Close unmaps the files; the statistics must not be used afterwards.
func (s *Statistics) Close() {
	for _, f := range s.files {
		_ = f.Close()
	}
	s.files = nil
}

// EngineParams returns the engine parameters of a merge of tensors (the
// merged tensors of the plan): c.Params() plus, for the data-aware methods
// (fisher, regmean), every model's statistics read from its statistics file
// (models[i].parameters.statistics, a safetensors file keyed by tensor
// name, as npsfuse.stats.save writes it). The files are memory-mapped:
// float32 statistics are used in place, float16 and bfloat16 ones widened
// once. The rules are npsfuse.merge's: statistics of tensors that are not
// merged are ignored (a note lists them), a tensor with statistics in one
// file must have them in every file, Fisher values must have the tensor's
// shape and Gram matrices be square; the engine checks the values. Close
// the returned Statistics once the merge is done.
func (c *Config) EngineParams(tensors []merge.Tensor) (p merge.Params, _ *Statistics, err error) {
	p = c.Params()
	st := &Statistics{}
	if spec, _ := merge.Spec(c.Method); !spec.DataAware {
		return p, st, nil
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	for i, m := range c.Models {
		if m.Statistics == "" {
			return p, nil, fmt.Errorf("%w: models[%d] (%s) has no statistics file; %s needs one per model", ErrInput, i, m.Path, c.Method)
		}
		f, err := safetensors.Open(m.Statistics)
		if err != nil {
			return p, nil, fmt.Errorf("%w: statistics of models[%d]: %v", ErrInput, i, err)
		}
		st.files = append(st.files, f)
	}
	files := st.files
	merged := make(map[string]*merge.Tensor, len(tensors))
	for i := range tensors {
		merged[tensors[i].Name] = &tensors[i]
	}
	var used []string
	unused := map[string]bool{}
	for _, f := range files {
		for _, name := range f.Names() {
			if merged[name] == nil {
				unused[name] = true
			} else if !slices.Contains(used, name) {
				used = append(used, name)
			}
		}
	}
	sort.Strings(used)
	if len(used) == 0 {
		return p, nil, fmt.Errorf("%w: none of the %s statistics names a merged tensor (check the statistics files of %s)", ErrInput, c.Method, modelList(c))
	}
	var bad []string
	stats := make(map[string][]tensor.Vec, len(used))
	st.Bytes = make(map[string][][]byte, len(used))
	for _, name := range used {
		t := merged[name]
		for i, f := range files {
			info, ok := f.Info(name)
			if !ok {
				bad = append(bad, fmt.Sprintf("the statistics of models[%d] (%s) lack tensor %q, which another model's have", i, f.Path(), name))
				continue
			}
			if msg := statisticsShape(c.Method, info.Shape, t.Shape); msg != "" {
				bad = append(bad, fmt.Sprintf("tensor %q in the statistics of models[%d] (%s): %s", name, i, f.Path(), msg))
				continue
			}
			b, v, err := statisticsVec(f, info)
			if err != nil {
				bad = append(bad, fmt.Sprintf("tensor %q in the statistics of models[%d]: %v", name, i, err))
				continue
			}
			stats[name] = append(stats[name], v)
			st.Bytes[name] = append(st.Bytes[name], b)
		}
	}
	if len(bad) > 0 {
		n := len(bad)
		if n > 20 {
			bad = append(bad[:20], fmt.Sprintf("… and %d more", n-20))
		}
		return p, nil, fmt.Errorf("%w: the statistics do not fit the models (%s):\n  - %s", ErrInput, plural(n, "problem"), strings.Join(bad, "\n  - "))
	}
	p.Statistics = stats
	if len(unused) > 0 {
		names := make([]string, 0, len(unused))
		for k := range unused {
			names = append(names, k)
		}
		sort.Strings(names)
		more := ""
		if len(names) > 3 {
			more = fmt.Sprintf(" and %d more", len(names)-3)
			names = names[:3]
		}
		st.Notes = append(st.Notes, fmt.Sprintf("statistics of tensors that are not merged are ignored: %s%s", strings.Join(names, ", "), more))
	}
	return p, st, nil
}

// statisticsShape says what is wrong with statistics of shape got for a
// tensor of shape want ("" when they fit): Fisher values have the tensor's
// shape, Gram matrices are square (the engine matches the side to the
// layer's input dimension).
func statisticsShape(method string, got []int64, want []int) string {
	if method == "regmean" {
		if len(got) != 2 || got[0] != got[1] {
			return fmt.Sprintf("a Gram matrix must be square (in × in), got shape %v", got)
		}
		return ""
	}
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		same = got[i] == int64(want[i])
	}
	if !same {
		return fmt.Sprintf("the Fisher values have shape %v, the tensor %v", got, want)
	}
	return ""
}

// statisticsVec returns one statistics tensor's mapped bytes and its view as
// float32: the mapping itself for float32 (copied once if misaligned),
// widened for float16 and bfloat16.
func statisticsVec(f *safetensors.File, info safetensors.TensorInfo) ([]byte, tensor.Vec, error) {
	var dt tensor.DType
	switch info.DType {
	case safetensors.F32:
		dt = tensor.F32
	case safetensors.F16:
		dt = tensor.F16
	case safetensors.BF16:
		dt = tensor.BF16
	default:
		return nil, tensor.Vec{}, fmt.Errorf("dtype %v; statistics must be float32, float16 or bfloat16", info.DType)
	}
	b, err := f.Bytes(info.Name)
	if err != nil {
		return nil, tensor.Vec{}, err
	}
	v, err := vecOf(b, dt, f.Path(), info.Name)
	if err != nil || dt == tensor.F32 {
		return b, v, err
	}
	x := make([]float32, v.Len())
	v.Load(x, 0)
	return b, tensor.FromF32(x), nil
}
