package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/topk"
)

// SCE (Wan et al., "FuseChat: Knowledge Fusion of Chat Models", 2024:
// select, calculate, erase), per tensor as mergekit's sce computes it. With
// τ_t = θ_t − θ₀ in float32:
//
//   - select: when select_topk < 1, only the entries whose variance across
//     the models, Var_t(τ_t) (population variance, computed in float64 and
//     rounded to float32 as torch does), is among the k = ⌊select_topk·nz⌋
//     largest are kept (nz: the entries of nonzero variance; ties at the cut
//     kept by lower index, where torch's topk leaves the order open), the
//     others are zeroed in every τ_t;
//   - calculate: w_t = mean(τ_t²) / Σ_s mean(τ_s²) (1/T when that sum is
//     below 1e-6), in float64, rounded to float32;
//   - erase: per entry, the models whose τ_t has the sign of Σ_t τ_t (+ when
//     the sum is 0; a zero τ_t never agrees) are kept;
//
// and θ = θ₀ + Σ w_t τ_t [agrees] / max(Σ w_t [agrees], 1e-6), each entry in
// mergekit's float32 operations. Weights, λ and Normalize are not used.
// mergekit's int8_mask only changes the mask's dtype there, not the result:
// it is accepted and ignored.
func init() {
	register(Method{Name: "sce", Sparsify: keepAll{}, Combine: sce{}})
	param(ParamSpec{Name: "select_topk", Kind: KindFloat, PerModel: Global, Default: 1.0, Range: in(0, 1, false, false),
		Doc: "SCE: fraction of the entries of nonzero variance across the task vectors kept (the most variable ones); 1 keeps all.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.SelectTopK}, false },
		set: func(p *Params, v []float64, _ bool) { p.SelectTopK = v[0] }})
	param(ParamSpec{Name: "int8_mask", Kind: KindBool, PerModel: Global, Default: false,
		Doc: "SCE (mergekit's memory option): accepted for mergekit's configs; it does not change the result.",
		get: func(*Params) ([]float64, bool) { return nil, false },
		set: func(*Params, []float64, bool) {}})
}

// sceState is one tensor's selection cut and weights.
type sceState struct {
	cut topk.Cut
	w   []float32
}

type sce struct{}

func (sce) normalizes(Params) bool { return false }

// sceVarBits writes the float32 bits of each entry's variance across the
// task vectors into dst.
func sceVarBits(taus [][]float32, dst []uint32) []uint32 {
	n := len(taus[0])
	dst = dst[:n]
	T := float64(len(taus))
	for j := range n {
		var s float64
		for _, x := range taus {
			s += float64(x[j])
		}
		mean := s / T
		var v float64
		for _, x := range taus {
			d := float64(x[j]) - mean
			v += d * d
		}
		dst[j] = math.Float32bits(float32(v / T))
	}
	return dst
}

// sceSelect zeroes, in every task vector of chunk ch, the entries outside
// the tensor's variance cut.
func sceSelect(st *sceState, ch chunkRef, taus [][]float32, bits []uint32) {
	if st.cut.All {
		return
	}
	if st.cut.None {
		for _, x := range taus {
			clear(x)
		}
		return
	}
	bits = sceVarBits(taus, bits)
	allow := st.cut.Allow(ch.lc)
	for j, b := range bits {
		keep := b > st.cut.Bits
		if b == st.cut.Bits && allow != 0 {
			keep = true
			if allow > 0 {
				allow--
			}
		}
		if !keep {
			for _, x := range taus {
				x[j] = 0
			}
		}
	}
}

func (sce) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	if e.sce == nil {
		e.sce = make([]sceState, len(e.tensors))
	}
	T := e.T
	for _, ti := range tis {
		st := &e.sce[ti]
		st.cut = topk.Cut{All: true}
		chunks := e.tensorChunks(ti)
		if d := e.p.SelectTopK; d < 1 {
			var fail chunkError
			src := func(c int, dst []uint32) []uint32 {
				ws := e.workspace()
				defer e.scratch.Put(ws)
				_, _, taus, err := e.loadAll(chunks[c], ws)
				if err != nil {
					fail.set(chunks[c].gc, err)
					n := chunks[c].hi - chunks[c].lo
					clear(dst[:n])
					return dst[:n]
				}
				return sceVarBits(taus, dst)
			}
			nz, err := e.tensorSums([]int{ti}, 1, func(ch chunkRef, ws *workspace, acc []float64) error {
				_, _, taus, err := e.loadAll(ch, ws)
				if err != nil {
					return err
				}
				for _, b := range sceVarBits(taus, make([]uint32, ch.hi-ch.lo)) {
					if b != 0 {
						acc[0]++
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			// mergekit's int(count_nonzero · select_topk), a float32 product.
			k := int64(float32(nz[0][0]) * float32(d))
			n := int64(e.tensors[ti].Base.Len())
			st.cut = topk.Select(k, n, len(chunks), src, e.p.Pool.Workers(len(chunks)))
			if fail.err != nil {
				return fail.err
			}
		}
		sq, err := e.tensorSums([]int{ti}, T, func(ch chunkRef, ws *workspace, acc []float64) error {
			_, _, taus, err := e.loadAll(ch, ws)
			if err != nil {
				return err
			}
			sceSelect(st, ch, taus, make([]uint32, ch.hi-ch.lo))
			for t, x := range taus {
				acc[t] = dot64(x, x)
			}
			return nil
		})
		if err != nil {
			return err
		}
		n := float64(e.tensors[ti].Base.Len())
		var sum float64
		for t := range sq[0] {
			sq[0][t] /= n
			sum += sq[0][t]
		}
		st.w = make([]float32, T)
		for t := range st.w {
			if math.Abs(sum) < 1e-6 {
				st.w[t] = 1 / float32(T)
			} else {
				st.w[t] = float32(sq[0][t] / sum)
			}
		}
	}
	return nil
}

func (sce) combine(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) {
	st := &e.sce[ch.ti]
	sceSelect(st, ch, taus, make([]uint32, len(out)))
	floor := float32(1e-6)
	for j := range out {
		var s float32
		for _, x := range taus {
			s += x[j]
		}
		var num, den float32
		for t, x := range taus {
			v := x[j]
			if v != 0 && (v > 0) == (s >= 0) {
				num += float32(v * st.w[t]) // the product rounded first, as torch
				den += st.w[t]
			}
		}
		out[j] = base[j] + num/max(den, floor)
	}
}
