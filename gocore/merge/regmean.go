package merge

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	blasgonum "gonum.org/v1/gonum/blas/gonum"
	lapackgonum "gonum.org/v1/gonum/lapack/gonum"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// RegMean (Jin, Ren, Preotiuc-Pietro & Cheng, "Dataless Knowledge Fusion by
// Merging Weights of Language Models", ICLR 2023, eq. 2 and §3.3): a linear
// layer y = W x (W out×in) is merged so that it best reproduces, in least
// squares, every model's outputs on that model's own inputs X_t:
//
//	W*ᵀ = (Σ_t w_t G̃_t)⁻¹ Σ_t w_t G̃_t W_tᵀ,   G̃_t = α·G_t + (1−α)·diag(G_t),
//
// where G_t = X_tᵀX_t/N_t is the Gram matrix of the layer's inputs under
// model t (Params.Statistics, in×in float32, symmetrised as (G + Gᵀ)/2
// here) and α (Alpha, the authors' non-diagonal multiplier, default 0.9)
// shrinks the off-diagonal entries towards the diagonal. It is solved in
// task-vector form, Δᵀ = (Σ_t w_t G̃_t)⁻¹ Σ_t w_t G̃_t τ_tᵀ and W* = W₀ + λ·Δ
// (the same W* for λ = 1, with better conditioned right-hand sides), in
// float64: the right-hand side by gonum's Dgemm over fixed 64×64 tiles of
// the result (in parallel, each tile one sequential call, so the sums do not
// depend on the thread count), then a Cholesky factorisation (LAPACK dpotrf)
// and solve (dpotrs). The result is rounded to float32 once.
//
// When Σ_t w_t G̃_t is not numerically positive definite (an input feature
// no example activated gives a zero row), a ridge δ·I is added, with δ =
// 10⁻⁸, 10⁻⁶, 10⁻⁴, 10⁻² times the mean diagonal in turn, and the
// right-hand side gains δ·τ̄ᵀ, τ̄ = Σ_t w_t τ_t / Σ_t w_t: the ridge pulls
// towards the weighted mean, so a dead input feature gets the mean of the
// models' columns. The report's "ridge" lists δ per tensor where it was
// needed.
//
// A tensor has a Gram matrix when it is a 2-D weight in PyTorch's (out, in)
// layout, or (in, out) as GPT-2's Conv1D stores it: the Gram's side says
// which dimension is the input, and Tensor.Transposed decides for square
// weights. Every other tensor (biases, norms, embeddings, layers without
// statistics) is merged as the weighted mean of the task vectors θ₀ +
// λ·Σ_t w_t τ_t / Σ_t w_t (the authors average them), listed in the report's
// "plain_average". Weights w_t scale each model's Gram (the authors'
// model_coeffs); they must be non-negative. A layer's solve needs about
// 16·in² + 24·in·out bytes; one layer is solved at a time, when its first
// chunk is merged, and its result is dropped once every chunk has been
// written. Cost per layer: T·in²·out multiply-adds for the right-hand side,
// in³/3 for the factorisation, in²·out for the solve.
func init() {
	register(Method{Name: "regmean", Sparsify: keepAll{}, Combine: regMean{}})
}

type regMean struct{}

// normalizes: the fallback divides by Σ_t w_t, so the engine rejects
// weights summing to 0.
func (regMean) normalizes(Params) bool { return true }

// linearLayout is a linear weight's orientation: out×in, stored transposed
// ((in, out), GPT-2's Conv1D) when transposed is set.
type linearLayout struct {
	out, in    int
	transposed bool
}

// regmeanLayout finds how tensor t multiplies its input, given its Gram
// matrix's number of entries.
func regmeanLayout(t *Tensor, gramLen int) (linearLayout, error) {
	if len(t.Shape) != 2 {
		return linearLayout{}, inputErr("regmean: a Gram matrix is given for tensor %q of shape %v; only 2-D linear weights have one", t.Name, t.Shape)
	}
	r, c := t.Shape[0], t.Shape[1]
	side := int(math.Sqrt(float64(gramLen)))
	for side*side > gramLen {
		side--
	}
	for (side+1)*(side+1) <= gramLen {
		side++
	}
	if side*side != gramLen {
		return linearLayout{}, inputErr("regmean: the Gram matrix of tensor %q has %d entries, not a square matrix", t.Name, gramLen)
	}
	switch {
	case r == c && side == c:
		if t.Transposed {
			return linearLayout{out: c, in: r, transposed: true}, nil
		}
		return linearLayout{out: r, in: c}, nil
	case side == c:
		return linearLayout{out: r, in: c}, nil
	case side == r:
		return linearLayout{out: c, in: r, transposed: true}, nil
	}
	return linearLayout{}, inputErr("regmean: the Gram matrix of tensor %q is %d×%d, but the tensor's shape is [%d %d]: its side must be the layer's input dimension", t.Name, side, side, r, c)
}

func (regMean) check(e *engine) error {
	if err := checkDataWeights(e, "regmean"); err != nil {
		return err
	}
	if err := checkStatistics(e, "regmean", func(ti, m, n int) error {
		_, err := regmeanLayout(&e.tensors[ti], n)
		return err
	}); err != nil {
		return err
	}
	e.data.solved = make([]regmeanSolution, len(e.tensors))
	return nil
}

// prepare checks the units' Gram matrices (finite, non-negative diagonal)
// so that bad statistics are reported before anything is merged.
func (regMean) prepare(e *engine, units []int) error {
	reportPlainAverage(e, units)
	for _, ti := range e.unitTensors(units) {
		name := e.tensors[ti].Name
		st, ok := e.p.Statistics[name]
		if !ok {
			continue
		}
		for m, v := range st {
			g := v.F32
			if !vec.Finite(g) {
				i := 0
				for i < len(g) && !math.IsNaN(float64(g[i])) && !math.IsInf(float64(g[i]), 0) {
					i++
				}
				return inputErr("regmean: tensor %q: the Gram matrix of model %d has %v at flat index %d", name, m, g[i], i)
			}
			side := int(math.Sqrt(float64(len(g))))
			for i := range side {
				if d := g[i*side+i]; d < 0 {
					return inputErr("regmean: tensor %q: the Gram matrix of model %d has a negative diagonal entry %v at (%d, %d)", name, m, d, i, i)
				}
			}
		}
	}
	return nil
}

// combine is never called: the engine calls combineChecked.
func (r regMean) combine(e *engine, ch chunkRef, base []float32, models, taus [][]float32, out []float32) {
	if err := r.combineChecked(e, ch, base, models, taus, out); err != nil {
		panic(err)
	}
}

// combineChecked copies chunk ch of the tensor's solution (solving the
// layer first if no chunk has yet), or merges tensors without a Gram matrix
// as the weighted mean.
func (regMean) combineChecked(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) error {
	if _, ok := e.p.Statistics[e.tensors[ch.ti].Name]; !ok {
		weightedMean(e, base, taus, out)
		return nil
	}
	s := &e.data.solved[ch.ti]
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return s.err
	}
	if s.out == nil {
		e.data.solving.Lock()
		s.out, s.err = e.regmeanSolve(ch.ti)
		e.data.solving.Unlock()
		if s.err != nil {
			s.mu.Unlock()
			return s.err
		}
		s.left = len(e.tensorChunks(ch.ti))
	}
	sol := s.out
	s.mu.Unlock()
	copy(out, sol[ch.lo:ch.hi])
	s.mu.Lock()
	if s.left--; s.left == 0 {
		s.out = nil // every chunk has its part: free the layer
	}
	s.mu.Unlock()
	return nil
}

// regmeanRidges are the ridges tried, relative to the mean diagonal, when
// the system is not numerically positive definite.
var regmeanRidges = []float64{1e-8, 1e-6, 1e-4, 1e-2}

// regmeanSolve merges linear weight ti: it returns θ₀ + λ·Δ in storage
// order, rounded to float32.
func (e *engine) regmeanSolve(ti int) ([]float32, error) {
	t := &e.tensors[ti]
	st := e.p.Statistics[t.Name]
	lay, err := regmeanLayout(t, st[0].Len())
	if err != nil {
		return nil, err
	}
	in, out := lay.in, lay.out
	n := in * out
	first := e.tensorChunks(ti)[0] // names the tensor in errors (flat indices)
	var scratchB, scratchM []float32
	if t.Base.DType != tensor.F32 {
		scratchB = make([]float32, n)
	}
	base := t.Base.View(0, n, scratchB)
	if !vec.Finite(base) {
		return nil, e.nonFinite(first, "the base model", base)
	}
	// τ is stored out×in (use its transpose) or, transposed, in×out.
	ldTau := out
	if !lay.transposed {
		ldTau = in
	}
	alpha := e.p.Alpha
	a := make([]float64, in*in)   // Σ_t w_t G̃_t
	g := make([]float64, in*in)   // G̃_t, then the Cholesky factor
	rhs := make([]float64, n)     // Σ_t w_t G̃_t τ_tᵀ, in×out
	tau := make([]float64, n)     // τ_t, storage order
	tauMean := make([]float64, n) // Σ_t w_t τ_t / Σ_t w_t, storage order
	for m := range e.T {
		w := float64(e.w[m])
		if w == 0 {
			continue
		}
		gm := st[m].F32
		for i := range in {
			for j := range in {
				v := float64(gm[i*in+i])
				if i != j {
					sym := (float64(gm[i*in+j]) + float64(gm[j*in+i])) / 2
					v = float64(alpha * sym)
				}
				g[i*in+j] = v
				a[i*in+j] += float64(w * v)
			}
		}
		if t.Models[m].DType != tensor.F32 && scratchM == nil {
			scratchM = make([]float32, n)
		}
		x := t.Models[m].View(0, n, scratchM)
		if !vec.Finite(x) {
			return nil, e.nonFinite(first, fmt.Sprintf("model %d", m), x)
		}
		for k := range tau {
			tau[k] = float64(x[k]) - float64(base[k])
			tauMean[k] += float64(w * tau[k])
		}
		gemmTiles(e.p.Pool, !lay.transposed, in, out, in, w, g, in, tau, ldTau, rhs, out)
	}
	wsum := float64(e.wsum)
	for k := range tauMean {
		tauMean[k] /= wsum
	}
	var lap lapackgonum.Implementation
	copy(g, a)
	if !lap.Dpotrf(blas.Upper, in, g, in) {
		ridge, err := regmeanRidge(a, g, in)
		if err != nil {
			return nil, inputErr("regmean: tensor %q: %v", t.Name, err)
		}
		// The ridge pulls towards the weighted mean: rhs += δ·τ̄ᵀ.
		for c := range in {
			for r := range out {
				rhs[c*out+r] += float64(ridge * tauMeanAt(tauMean, lay, r, c))
			}
		}
		e.reportTensor("ridge", t.Name, ridge)
	}
	lap.Dpotrs(blas.Upper, in, out, g, in, rhs, out)
	lam := e.p.Lambda
	res := make([]float32, n)
	for c := range in {
		for r := range out {
			k := r*in + c // storage index of W[r][c]
			if lay.transposed {
				k = c*out + r
			}
			res[k] = float32(float64(base[k]) + float64(lam*rhs[c*out+r]))
		}
	}
	if !vec.Finite(res) {
		return nil, inputErr("regmean: tensor %q: the merged weight is not finite (the Gram matrices are too ill-conditioned)", t.Name)
	}
	return res, nil
}

// regmeanRidge factorises a + δ·I into factor (in×in, upper Cholesky) for
// the first δ of regmeanRidges (relative to a's mean diagonal) that makes
// it positive definite, and returns δ.
func regmeanRidge(a, factor []float64, in int) (float64, error) {
	var lap lapackgonum.Implementation
	var mean float64
	for i := range in {
		mean += a[i*in+i]
	}
	mean /= float64(in)
	if !(mean > 0) {
		mean = 1
	}
	var ridge float64
	for _, r := range regmeanRidges {
		ridge = r * mean
		copy(factor, a)
		for i := range in {
			factor[i*in+i] += ridge
		}
		if lap.Dpotrf(blas.Upper, in, factor, in) {
			return ridge, nil
		}
	}
	return 0, fmt.Errorf("the system Σ w_t G̃_t is not positive definite even with a ridge of %g (check the Gram matrices)", ridge)
}

// tauMeanAt is element (r, c) of the weighted mean task vector of an
// out×in layer, from its storage.
func tauMeanAt(x []float64, lay linearLayout, r, c int) float64 {
	if lay.transposed {
		return x[c*lay.out+r]
	}
	return x[r*lay.in+c]
}

// gemmTile is the side of the result tiles gemmTiles computes in parallel.
const gemmTile = 64

// gemmTiles computes C += alpha·A·op(B) in float64, with A m×k (row-major,
// leading dimension lda), op(B) k×n (B stored n×k when transB, else k×n)
// and C m×n. Each 64×64 tile of C is one call of gonum's Dgemm, which runs
// it serially, so the result does not depend on how tiles are spread over
// the pool's goroutines.
func gemmTiles(pool parallel.Pool, transB bool, m, n, k int, alpha float64, a []float64, lda int, b []float64, ldb int, c []float64, ldc int) {
	var impl blasgonum.Implementation
	tm, tn := (m+gemmTile-1)/gemmTile, (n+gemmTile-1)/gemmTile
	tb := blas.NoTrans
	if transB {
		tb = blas.Trans
	}
	pool.For(tm*tn, func(_, t int) {
		i0, j0 := (t/tn)*gemmTile, (t%tn)*gemmTile
		mi, nj := min(gemmTile, m-i0), min(gemmTile, n-j0)
		bs := b[j0:]
		if transB {
			bs = b[j0*ldb:]
		}
		impl.Dgemm(blas.NoTrans, tb, mi, nj, k, alpha, a[i0*lda:], lda, bs, ldb, 1, c[i0*ldc+j0:], ldc)
	})
}
