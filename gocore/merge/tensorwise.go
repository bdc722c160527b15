package merge

import (
	"context"
	"maps"
	"slices"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// A merge whose parameters vary by tensor (Params.Tensorwise) is one
// merge per set of values: the tensors are grouped by their evaluated
// parameters (in tensor order) and each group merged as usual. Only
// methods that merge each tensor on its own take such parameters (Resolve
// refuses the others), so the grouping changes nothing else.

// tensorGroups evaluates p for every tensor and groups the tensors that
// share their values: each group's parameters and its tensors' indices.
func tensorGroups(p Params, tensors []Tensor) ([]Params, [][]int) {
	names := make([]string, len(tensors))
	for i, t := range tensors {
		names[i] = t.Name
	}
	pos := LayerPositions(names)
	var params []Params
	var members [][]int
	index := map[string]int{}
	for i, t := range tensors {
		tp, key := p.forTensor(t.Name, pos[i])
		g, ok := index[key]
		if !ok {
			g = len(params)
			index[key] = g
			params = append(params, tp)
			members = append(members, nil)
		}
		members[g] = append(members[g], i)
	}
	return params, members
}

// runTensorwise is RunReportContext for parameters that vary by tensor.
func runTensorwise(ctx context.Context, method string, p Params, tensors []Tensor) (map[string]any, error) {
	params, members := tensorGroups(p, tensors)
	report := map[string]any{}
	for g, idx := range members {
		sub := make([]Tensor, len(idx))
		for j, i := range idx {
			sub[j] = tensors[i]
		}
		rep, err := RunReportContext(ctx, method, params[g], sub)
		if err != nil {
			return nil, err
		}
		mergeReports(report, rep)
	}
	return report, nil
}

// mergeReports adds src's entries to dst: maps by tensor name are joined,
// other values replaced.
func mergeReports(dst, src map[string]any) {
	for k, v := range src {
		switch x := v.(type) {
		case map[string]float64:
			if d, ok := dst[k].(map[string]float64); ok {
				maps.Copy(d, x)
				continue
			}
			dst[k] = maps.Clone(x)
		case map[string]bool:
			if d, ok := dst[k].(map[string]bool); ok {
				maps.Copy(d, x)
				continue
			}
			dst[k] = maps.Clone(x)
		default:
			dst[k] = v
		}
	}
}

// tensorwiseMerger is the Merger of parameters that vary by tensor: one
// Merger per group, and where each tensor is.
type tensorwiseMerger struct {
	subs []*Merger
	at   [][2]int // tensor i → (group, index inside it)
}

func newTensorwiseMerger(method string, p Params, tensors []Tensor) (*Merger, error) {
	params, members := tensorGroups(p, tensors)
	tw := &tensorwiseMerger{at: make([][2]int, len(tensors))}
	for g, idx := range members {
		sub := make([]Tensor, len(idx))
		for j, i := range idx {
			sub[j] = tensors[i]
			tw.at[i] = [2]int{g, j}
		}
		m, err := NewMerger(method, params[g], sub)
		if err != nil {
			return nil, err
		}
		tw.subs = append(tw.subs, m)
	}
	return &Merger{tw: tw}, nil
}

func (tw *tensorwiseMerger) tensor(i int, out tensor.Vec) error {
	if i < 0 || i >= len(tw.at) {
		return inputErr("tensor index %d out of range [0, %d)", i, len(tw.at))
	}
	a := tw.at[i]
	return tw.subs[a[0]].Tensor(a[1], out)
}

func (tw *tensorwiseMerger) report() map[string]any {
	out := map[string]any{}
	for _, m := range slices.Clone(tw.subs) {
		mergeReports(out, m.Report())
	}
	return out
}
