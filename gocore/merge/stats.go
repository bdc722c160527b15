package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/vec"

	"gonum.org/v1/gonum/blas/gonum"
)

// dot64 is Σ x_i·y_i over float32 inputs, accumulated in float64 (gonum's
// Dsdot, assembly on amd64). The accumulation order is fixed, so the result
// is reproducible.
func dot64(x, y []float32) float64 {
	return gonum.Implementation{}.Dsdot(len(x), x, 1, y, 1)
}

// tensorSums computes width float64 statistics per tensor: fn adds chunk
// ch's contribution into acc (zeroed, width long); chunks run in parallel
// and are summed per tensor in chunk order, so the result does not depend
// on the thread count. It returns the sums indexed like tis, or the error
// of the lowest failing chunk.
func (e *engine) tensorSums(tis []int, width int, fn func(ch chunkRef, ws *workspace, acc []float64) error) ([][]float64, error) {
	var chunks []chunkRef
	var owner []int
	for i, ti := range tis {
		for _, ch := range e.tensorChunks(ti) {
			chunks = append(chunks, ch)
			owner = append(owner, i)
		}
	}
	accs := make([]float64, len(chunks)*width)
	var fail chunkError
	e.p.Pool.For(len(chunks), func(_, c int) {
		if err := e.cancelled(); err != nil { // RunReportContext's ctx, per chunk
			fail.set(chunks[c].gc, err)
			return
		}
		ws := e.workspace()
		defer e.scratch.Put(ws)
		if err := fn(chunks[c], ws, accs[c*width:(c+1)*width]); err != nil {
			fail.set(chunks[c].gc, err)
		}
	})
	if fail.err != nil {
		return nil, fail.err
	}
	sums := make([][]float64, len(tis))
	for i := range sums {
		sums[i] = make([]float64, width)
	}
	for c := range chunks {
		s := sums[owner[c]]
		for k, v := range accs[c*width : (c+1)*width] {
			s[k] += v
		}
	}
	return sums, nil
}

// absSum is Σ|x| in float64, in index order.
func absSum(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += math.Abs(float64(v))
	}
	return s
}

// unitTensors lists the tensors of the given units.
func (e *engine) unitTensors(units []int) []int {
	all := e.units()
	var tis []int
	for _, u := range units {
		tis = append(tis, all[u].tensors...)
	}
	return tis
}

// reportTensor records value v for tensor name under report entry key (a
// map from tensor names).
func (e *engine) reportTensor(key, name string, v any) {
	e.reportM.Lock()
	defer e.reportM.Unlock()
	switch x := v.(type) {
	case float64:
		m, _ := e.report[key].(map[string]float64)
		if m == nil {
			m = map[string]float64{}
			e.report[key] = m
		}
		m[name] = x
	case bool:
		m, _ := e.report[key].(map[string]bool)
		if m == nil {
			m = map[string]bool{}
			e.report[key] = m
		}
		m[name] = x
	}
}

// taskGrams returns, per tensor of tis, the T(T+1)/2 inner products
// τ_a·τ_b (a ≤ b, in pairIndex order) of its task vectors, summed in
// float64 over the chunks in order (model_stock, multislerp).
func (e *engine) taskGrams(tis []int) ([][]float64, error) {
	T := e.T
	return e.tensorSums(tis, T*(T+1)/2, func(ch chunkRef, ws *workspace, acc []float64) error {
		if !generalOnly {
			// Every product in one pass over the inputs, bit for bit the
			// sums below (vec.TaskGrams); it declines where it cannot.
			base := e.view(e.tensors[ch.ti].Base, ch, ws, ws.base)
			models := ws.views[:T:T]
			for m := range T {
				models[m] = e.view(e.tensors[ch.ti].Models[m], ch, ws, ws.models[m])
			}
			if vec.TaskGrams(acc, base, models) {
				return nil
			}
		}
		_, _, taus, err := e.loadAll(ch, ws)
		if err != nil {
			return err
		}
		for a := range T {
			for b := a; b < T; b++ {
				acc[pairIndex(T, a, b)] = dot64(taus[a], taus[b])
			}
		}
		return nil
	})
}
