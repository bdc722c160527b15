package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/topk"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// Arcee Fusion (mergekit's arcee_fusion): between the base θ₀ and one
// fine-tuned model θ₁, each entry's importance is |θ₁ − θ₀| times the KL
// divergence KL(p‖q) of its row (the tensor's last dimension, as stored),
// p = softmax(θ₁'s row) + 1e-8, q = softmax(θ₀'s row) + 1e-8; the entries
// whose importance reaches median + 1.5·(Q3 − Q1) (Tukey's upper fence;
// the quartiles are the sorted importances at ⌊q·(n−1)⌋, as mergekit takes
// them) take θ₀ + (θ₁ − θ₀), the others keep θ₀. Softmaxes and KL sums are
// float64 rounded to float32, the importances and the fence float32. Where
// mergekit estimates the quartiles of a tensor above a million entries from
// a random sample, npsfuse sorts every entry (deterministic). Each tensor is
// held whole (three float32 copies) while its fence is found. Exactly one
// fine-tuned model; weights, λ and Normalize are not used.
func init() {
	register(Method{Name: "arcee_fusion", Sparsify: keepAll{}, Combine: arceeFusion{}})
}

// afState is one tensor's row KL divergences and fence.
type afState struct {
	cols  int       // row length (the last dimension)
	kl    []float32 // per row
	fence float32
}

type arceeFusion struct{}

func (arceeFusion) normalizes(Params) bool { return false }

func (arceeFusion) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	if e.fusion == nil {
		e.fusion = make([]afState, len(e.tensors))
	}
	for _, ti := range tis {
		t := &e.tensors[ti]
		n := t.Base.Len()
		if n == 0 {
			continue
		}
		cols := n
		if len(t.Shape) > 0 && t.Shape[len(t.Shape)-1] > 0 {
			cols = t.Shape[len(t.Shape)-1]
		}
		b := t.Base.View(0, n, make([]float32, n))
		x := t.Models[0].View(0, n, make([]float32, n))
		st := afState{cols: cols, kl: make([]float32, n/cols)}
		e.p.Pool.For(len(st.kl), func(_, r int) {
			st.kl[r] = rowKL(x[r*cols:(r+1)*cols], b[r*cols:(r+1)*cols])
		})
		st.fence = fusionFence(e.p.Pool, x, b, &st)
		e.fusion[ti] = st
	}
	return nil
}

// fusionFence is Tukey's upper fence of the tensor's importances: their
// quartiles are order statistics of the importances' order keys
// (orderKey), found by radix selection (topk.Select), which gives the same
// values as sorting the float32 importances. Integer keys and a selection
// instead of a comparison sort keep legacy-SSE float compares out of the
// hot loop: with GOEXPERIMENT=simd a preemption leaves the vector registers'
// upper halves dirty, and every scalar float instruction after it then runs
// slowly on Intel CPUs until the next VZEROUPPER (issue 15).
func fusionFence(pool parallel.Pool, x, b []float32, st *afState) float32 {
	n := len(x)
	keys := make([]uint32, n)
	nc := parallel.NumChunks(n)
	pool.For(nc, func(_, c int) {
		lo, hi := c*parallel.Chunk, min(n, (c+1)*parallel.Chunk)
		vec.ClearAVXUpper()
		for j := lo; j < hi; j++ {
			keys[j] = orderKey(fusionImportance(x[j], b[j], st.kl[j/st.cols]))
		}
	})
	src := func(c int, dst []uint32) []uint32 {
		lo, hi := c*parallel.Chunk, min(n, (c+1)*parallel.Chunk)
		return append(dst[:0], keys[lo:hi]...)
	}
	// at is the importance at ascending index ⌊q·(n−1)⌋: the
	// (n − index)-th largest key.
	at := func(q float32) float32 {
		i := int64(q * float32(n-1))
		if i == 0 { // the smallest: Select reports k = n as "keep all"
			k := keys[0]
			for _, v := range keys[1:] {
				k = min(k, v)
			}
			return fromOrderKey(k)
		}
		cut := topk.Select(int64(n)-i, int64(n), nc, src, pool.Workers(nc))
		return fromOrderKey(cut.Bits)
	}
	q1, med, q3 := at(0.25), at(0.5), at(0.75)
	vec.ClearAVXUpper()
	return med + float32(1.5*(q3-q1))
}

// rowKL is Σ p log(p/q) over one row, p and q the softmaxes of x and b plus
// 1e-8 (float32, as mergekit), summed in float64 and rounded to float32.
func rowKL(x, b []float32) float32 {
	px, qb := softmax64(x), softmax64(b)
	eps := float32(1e-8)
	var kl float64
	for lo := 0; lo < len(px); lo += pcbClearEvery {
		vec.ClearAVXUpper() // as in PCB: math.Log after a preemption
		for j := lo; j < min(len(px), lo+pcbClearEvery); j++ {
			p := float32(px[j]) + eps
			q := float32(qb[j]) + eps
			kl += float64(p) * math.Log(float64(p/q))
		}
	}
	return float32(kl)
}

// softmax64 is softmax(v) in float64. The loops that call math.Exp clear
// the upper register halves once per block of pcbClearEvery entries, outside
// the inner loop: a test of the counter inside it made the loop run 2–3×
// slower in the GOEXPERIMENT=simd build than in the plain one on an Intel
// Xeon (a layout effect, measured, not understood).
func softmax64(v []float32) []float64 {
	m := math.Inf(-1)
	for _, x := range v {
		m = max(m, float64(x))
	}
	out := make([]float64, len(v))
	var s float64
	for lo := 0; lo < len(v); lo += pcbClearEvery {
		vec.ClearAVXUpper() // as in PCB: math.Exp after a preemption
		for j := lo; j < min(len(v), lo+pcbClearEvery); j++ {
			out[j] = math.Exp(float64(v[j]) - m)
			s += out[j]
		}
	}
	for j := range out {
		out[j] /= s
	}
	return out
}

// fusionImportance is |x − b|·KL in float32.
func fusionImportance(x, b, kl float32) float32 {
	d := x - b
	if d < 0 {
		d = -d
	}
	return d * kl
}

func (arceeFusion) combine(e *engine, ch chunkRef, base []float32, models, _ [][]float32, out []float32) {
	st := &e.fusion[ch.ti]
	x := models[0]
	for j := range out {
		if j%pcbClearEvery == 0 {
			vec.ClearAVXUpper() // scalar float code after a preemption: see fusionFence
		}
		b := base[j]
		if fusionImportance(x[j], b, st.kl[(ch.lo+j)/st.cols]) >= st.fence {
			out[j] = b + (x[j] - b)
		} else {
			out[j] = b
		}
	}
}
