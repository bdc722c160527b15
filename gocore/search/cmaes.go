package search

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/mat"
)

// CMAESOptions configures NewCMAES.
type CMAESOptions struct {
	// X0 is the initial mean m⁽⁰⁾, length n >= 1, finite and inside the box.
	X0 []float64
	// Sigma0 is the initial step size σ⁽⁰⁾ > 0. Zero means 0.3·mean(Hi − Lo)
	// when bounds are given (an error otherwise). The initial covariance is I,
	// so coordinates should be scaled to similar sensitivity.
	Sigma0 float64
	// Lo, Hi are optional box bounds: both nil (unbounded) or both of length n
	// with finite Lo[i] <= Hi[i].
	Lo, Hi []float64
	// Popsize is λ >= 2; zero means the default 4 + ⌊3 ln n⌋.
	Popsize int
	// Minimize makes lower fitness better. The default (false) maximises.
	Minimize bool
	// Seed seeds the RNG.
	Seed uint64
}

// CMAES is the (μ/μ_w, λ)-CMA-ES of Hansen's tutorial (arXiv:1604.00772,
// 2016): weighted recombination of the μ = ⌊λ/2⌋ best of λ samples with the
// positive log weights w_i ∝ ln((λ+1)/2) − ln i (i = 1…μ, summing to one; no
// active/negative weights), cumulative step-size adaptation, rank-one update
// with the evolution path p_c and the h_σ stall, rank-μ update, c_m = 1, and
// the default strategy parameters of the tutorial's Table 1:
//
//	c_σ = (μ_eff+2)/(n+μ_eff+5),  d_σ = 1 + 2·max(0, √((μ_eff−1)/(n+1)) − 1) + c_σ,
//	c_c = (4+μ_eff/n)/(n+4+2μ_eff/n),  c_1 = 2/((n+1.3)²+μ_eff),
//	c_μ = min(1−c_1, 2(μ_eff−2+1/μ_eff)/((n+2)²+μ_eff)).
//
// h_σ = 1 iff ‖p_σ‖/√(1−(1−c_σ)^{2(g+1)}) < (1.4 + 2/(n+1))·E‖N(0,I)‖ with
// E‖N(0,I)‖ ≈ √n(1 − 1/(4n) + 1/(21n²)).
//
// C = B·diag(D²)·Bᵀ is re-decomposed (gonum mat.EigenSym) lazily, every
// max(1, ⌊1/(10·n·(c_1+c_μ))⌋) generations as the tutorial suggests;
// sampling and C^{-1/2} use the latest B, D in between (for n <= ~300 this is
// every generation).
//
// Bounds (repair, Lamarckian): a sample x = m + σy is clipped to the box for
// evaluation, and the CLIPPED point enters the update through
// y' = (clip(x) − m)/σ. As for any injected solution, y' is rescaled to
// Mahalanobis length ‖C^{-1/2}y'‖ <= c_y = √n + 2n/(n+2) (Hansen, "Injecting
// external solutions into CMA-ES", arXiv:1110.4181, 2011), so step-size and
// covariance updates stay sane; unclipped samples are used unchanged. The
// weights sum to one, so the mean is a convex combination of points of the
// box and stays inside (it is also clipped against rounding); an optimum on
// the boundary is approached with a shrinking σ instead of the mean drifting
// through the flat region outside the box. Without bounds this is the plain
// algorithm.
//
// Numerical safeguards, as in Hansen's reference implementations: if the best
// and the ⌈0.7λ⌉-th best fitness are equal (flat fitness, e.g. a coarse
// validation metric, or only failed evaluations), σ is multiplied by
// exp(0.2 + c_σ/d_σ); the condition number of C is capped at 1e14 (small
// eigenvalues are raised and C rebuilt from B, D); when the largest
// eigenvalue of C leaves [1e-8, 1e8] the scale is moved into σ (σ²C is
// unchanged); σ·max(D) is capped at 1e20·σ⁽⁰⁾. There is no built-in
// termination: callers run a fixed number of generations or test StdDevs
// and the fitness history themselves.
//
// Cost: Ask O(λn²), Tell O(μn² + λn) plus O(n³) per eigendecomposition;
// memory O(n² + λn). Not safe for concurrent use.
type CMAES struct {
	// fixed by (n, λ) and the options
	n, lambda, mu int
	w             []float64
	mueff         float64
	cs, ds        float64
	cc, c1, cmu   float64
	chiN, cy      float64
	eigenGap      int
	sigma0        float64
	lo, hi        []float64
	minimize      bool

	// dynamic state
	mean, ps, pc []float64
	sigma        float64
	c, b         []float64 // n×n row-major; column k of b is the k-th eigenvector
	d            []float64 // sqrt of the eigenvalues of c
	gen, evals   int
	eigenGen     int
	pending      [][]float64 // y = B·D·z of the outstanding Ask, or nil
	bestX        []float64
	bestF        float64
	rng          *RNG
}

// NewCMAES validates opt and returns an optimiser at generation 0 with mean
// X0 (copied), step size Sigma0, C = I and zero evolution paths.
func NewCMAES(opt CMAESOptions) (*CMAES, error) {
	n := len(opt.X0)
	if n == 0 {
		return nil, errors.New("search: NewCMAES: X0 is empty")
	}
	if err := checkBounds(opt.Lo, opt.Hi, n); err != nil {
		return nil, fmt.Errorf("search: NewCMAES: %w", err)
	}
	if err := checkInside(opt.X0, opt.Lo, opt.Hi, "X0"); err != nil {
		return nil, fmt.Errorf("search: NewCMAES: %w", err)
	}
	sigma := opt.Sigma0
	if sigma == 0 {
		if opt.Lo == nil {
			return nil, errors.New("search: NewCMAES: Sigma0 is required without bounds")
		}
		var s float64
		for i := range opt.Lo {
			s += opt.Hi[i] - opt.Lo[i]
		}
		sigma = 0.3 * s / float64(n)
	}
	if !(sigma > 0) || math.IsInf(sigma, 0) {
		return nil, fmt.Errorf("search: NewCMAES: Sigma0 must be finite and > 0, got %v", sigma)
	}
	lambda := opt.Popsize
	if lambda == 0 {
		lambda = DefaultCMAESPopsize(n)
	}
	if lambda < 2 {
		return nil, fmt.Errorf("search: NewCMAES: Popsize must be >= 2, got %d", lambda)
	}
	e := &CMAES{}
	e.setParams(n, lambda, slices.Clone(opt.Lo), slices.Clone(opt.Hi), opt.Minimize)
	e.mean = slices.Clone(opt.X0)
	e.sigma, e.sigma0 = sigma, sigma
	e.ps = make([]float64, n)
	e.pc = make([]float64, n)
	e.c = identity(n)
	e.b = identity(n)
	e.d = make([]float64, n)
	for i := range e.d {
		e.d[i] = 1
	}
	e.bestF = worst(opt.Minimize)
	e.rng = NewRNG(opt.Seed)
	return e, nil
}

// Numerical safeguards of CMAES (see the type's documentation).
const (
	maxCondition   = 1e14 // largest allowed condition number of C
	maxSigmaGrowth = 1e20 // σ·max(D) never exceeds maxSigmaGrowth·σ⁽⁰⁾
)

// DefaultCMAESPopsize is the tutorial's default λ = 4 + ⌊3 ln n⌋.
func DefaultCMAESPopsize(n int) int {
	return 4 + int(math.Floor(3*math.Log(float64(n))))
}

func identity(n int) []float64 {
	m := make([]float64, n*n)
	for i := 0; i < n; i++ {
		m[i*n+i] = 1
	}
	return m
}

// setParams fills the strategy parameters, which depend only on (n, λ).
func (e *CMAES) setParams(n, lambda int, lo, hi []float64, minimize bool) {
	e.n, e.lambda, e.mu = n, lambda, lambda/2
	e.lo, e.hi, e.minimize = lo, hi, minimize
	fn := float64(n)
	e.w = make([]float64, e.mu)
	var sum, sum2 float64
	for i := range e.w {
		e.w[i] = math.Log(float64(lambda+1)/2) - math.Log(float64(i+1))
		sum += e.w[i]
	}
	for i := range e.w {
		e.w[i] /= sum
		sum2 += e.w[i] * e.w[i]
	}
	e.mueff = 1 / sum2
	e.cs = (e.mueff + 2) / (fn + e.mueff + 5)
	e.ds = 1 + 2*math.Max(0, math.Sqrt((e.mueff-1)/(fn+1))-1) + e.cs
	e.cc = (4 + e.mueff/fn) / (fn + 4 + 2*e.mueff/fn)
	e.c1 = 2 / ((fn+1.3)*(fn+1.3) + e.mueff)
	e.cmu = math.Min(1-e.c1, 2*(e.mueff-2+1/e.mueff)/((fn+2)*(fn+2)+e.mueff))
	e.chiN = math.Sqrt(fn) * (1 - 1/(4*fn) + 1/(21*fn*fn))
	e.cy = math.Sqrt(fn) + 2*fn/(fn+2)
	e.eigenGap = int(math.Floor(1 / (10 * fn * (e.c1 + e.cmu))))
	if e.eigenGap < 1 {
		e.eigenGap = 1
	}
}

// Dim returns n.
func (e *CMAES) Dim() int { return e.n }

// Popsize returns λ.
func (e *CMAES) Popsize() int { return e.lambda }

// Generation returns the number of completed Tell calls.
func (e *CMAES) Generation() int { return e.gen }

// Evals returns the number of fitness values told so far (λ per generation).
func (e *CMAES) Evals() int { return e.evals }

// Sigma returns the current step size σ.
func (e *CMAES) Sigma() float64 { return e.sigma }

// StdDevs returns the current per-coordinate standard deviations of the
// sampling distribution, σ·√C_ii (length n). Useful for termination tests
// such as max(StdDevs) < tolX.
func (e *CMAES) StdDevs() []float64 {
	out := make([]float64, e.n)
	for i := range out {
		out[i] = e.sigma * math.Sqrt(e.c[i*e.n+i])
	}
	return out
}

// Mean returns a copy of the current distribution mean m (length n).
func (e *CMAES) Mean() []float64 { return slices.Clone(e.mean) }

// Best returns a copy of the best point evaluated so far (the clipped point
// that was evaluated) and its fitness as told; ties keep the earliest. Before
// any successful evaluation it returns nil and −Inf (+Inf when minimising).
func (e *CMAES) Best() (x []float64, f float64) { return slices.Clone(e.bestX), e.bestF }

// Ask returns λ points to evaluate, each x_k = clip(m + σ·B·D·z_k) with
// z_k ~ N(0, I) drawn coordinate by coordinate, k = 0…λ−1 (n NormFloat64 draws
// per point). The slices are fresh copies. Calling Ask again before Tell
// returns the same points and draws nothing. O(λn²).
func (e *CMAES) Ask() [][]float64 {
	if e.pending == nil {
		n := e.n
		z := make([]float64, n)
		e.pending = make([][]float64, e.lambda)
		for k := range e.pending {
			for j := range z {
				z[j] = e.d[j] * e.rng.NormFloat64()
			}
			y := make([]float64, n)
			for i := 0; i < n; i++ {
				row := e.b[i*n : (i+1)*n]
				var s float64
				for j, v := range row {
					s += v * z[j]
				}
				y[i] = s
			}
			e.pending[k] = y
		}
	}
	out := make([][]float64, e.lambda)
	for k, y := range e.pending {
		out[k] = e.point(y)
	}
	return out
}

// point returns clip(m + σy) as a new slice.
func (e *CMAES) point(y []float64) []float64 {
	x := make([]float64, e.n)
	for i := range x {
		x[i] = e.mean[i] + e.sigma*y[i]
	}
	if e.lo != nil {
		RepairClip(x, e.lo, e.hi)
	}
	return x
}

// Tell takes the fitness of the points of the pending Ask (same order, higher
// is better unless Minimize) and performs one CMA-ES update. Non-finite values
// rank worst; ties keep Ask's order. Argument errors (no pending Ask, wrong
// length) leave the optimiser unchanged; an error from the eigendecomposition
// or a non-finite updated state means numerical breakdown and the optimiser
// should be discarded. O(μn²) plus an occasional O(n³) eigendecomposition.
func (e *CMAES) Tell(fitness []float64) error {
	if e.pending == nil {
		return fmt.Errorf("search: CMAES.Tell: %w", ErrNoPending)
	}
	if len(fitness) != e.lambda {
		return fmt.Errorf("search: CMAES.Tell: got %d fitness values, want %d", len(fitness), e.lambda)
	}
	n := e.n
	s := make([]float64, e.lambda)
	for k, f := range fitness {
		s[k] = score(f, e.minimize)
	}
	order := rankDescending(s)
	if top := order[0]; s[top] > math.Inf(-1) && (e.bestX == nil || s[top] > score(e.bestF, e.minimize)) {
		e.bestX = e.point(e.pending[top])
		e.bestF = fitness[top]
	}

	// Selected steps, repaired (Lamarckian) and length-capped when clipped.
	ys := make([][]float64, e.mu)
	yw := make([]float64, n)
	for r := 0; r < e.mu; r++ {
		y := e.repairedStep(e.pending[order[r]])
		ys[r] = y
		for i, v := range y {
			yw[i] += e.w[r] * v
		}
	}

	// Mean (c_m = 1), kept inside the box against rounding.
	for i := range e.mean {
		e.mean[i] += e.sigma * yw[i]
	}
	if e.lo != nil {
		RepairClip(e.mean, e.lo, e.hi)
	}

	// Step-size path: p_σ ← (1−c_σ)p_σ + √(c_σ(2−c_σ)μ_eff)·C^{-1/2}⟨y⟩_w.
	zw := e.invSqrtC(yw)
	a := math.Sqrt(e.cs * (2 - e.cs) * e.mueff)
	var psn2 float64
	for i := range e.ps {
		e.ps[i] = (1-e.cs)*e.ps[i] + a*zw[i]
		psn2 += e.ps[i] * e.ps[i]
	}
	psn := math.Sqrt(psn2)
	hsig := 0.0
	if psn/math.Sqrt(1-math.Pow(1-e.cs, 2*float64(e.gen+1))) < (1.4+2/float64(n+1))*e.chiN {
		hsig = 1
	}

	// Covariance path and covariance.
	ac := hsig * math.Sqrt(e.cc*(2-e.cc)*e.mueff)
	for i := range e.pc {
		e.pc[i] = (1-e.cc)*e.pc[i] + ac*yw[i]
	}
	decay := 1 - e.c1 - e.cmu + (1-hsig)*e.c1*e.cc*(2-e.cc)
	for i := 0; i < n; i++ {
		for j := i; j < n; j++ {
			var rmu float64
			for r, y := range ys {
				rmu += e.w[r] * y[i] * y[j]
			}
			v := decay*e.c[i*n+j] + e.c1*e.pc[i]*e.pc[j] + e.cmu*rmu
			e.c[i*n+j] = v
			e.c[j*n+i] = v
		}
	}

	// Step size (CSA), enlarged on flat fitness, capped at 1e20·σ⁽⁰⁾ (in the
	// largest principal axis).
	e.sigma *= math.Exp((e.cs / e.ds) * (psn/e.chiN - 1))
	if s[order[0]] == s[order[(7*e.lambda+9)/10-1]] {
		e.sigma *= math.Exp(0.2 + e.cs/e.ds)
	}

	e.gen++
	e.evals += e.lambda
	e.pending = nil
	if e.gen-e.eigenGen >= e.eigenGap {
		if err := e.decompose(); err != nil {
			return fmt.Errorf("search: CMAES.Tell: generation %d: %w", e.gen, err)
		}
		e.eigenGen = e.gen
	}
	if limit := maxSigmaGrowth * e.sigma0 / slices.Max(e.d); e.sigma > limit {
		e.sigma = limit
	}
	if !(e.sigma > 0) || math.IsInf(e.sigma, 0) || !allFinite(e.mean) {
		return fmt.Errorf("search: CMAES.Tell: numerical breakdown at generation %d (sigma=%v)", e.gen, e.sigma)
	}
	return nil
}

// repairedStep returns the step that enters the update for the sample m + σy:
// y itself when the sample is inside the box, otherwise (clip(m+σy) − m)/σ
// rescaled to Mahalanobis length ‖C^{-1/2}y'‖ <= c_y.
func (e *CMAES) repairedStep(y []float64) []float64 {
	if e.lo == nil {
		return y
	}
	x := make([]float64, e.n)
	clipped := false
	for i := range x {
		x[i] = e.mean[i] + e.sigma*y[i]
		if x[i] < e.lo[i] || x[i] > e.hi[i] {
			clipped = true
		}
	}
	if !clipped {
		return y
	}
	RepairClip(x, e.lo, e.hi)
	for i := range x {
		x[i] = (x[i] - e.mean[i]) / e.sigma
	}
	var l2 float64
	for _, v := range e.invSqrtC(x) {
		l2 += v * v
	}
	if l := math.Sqrt(l2); l > e.cy {
		f := e.cy / l
		for i := range x {
			x[i] *= f
		}
	}
	return x
}

// invSqrtC returns C^{-1/2}·v = B·D⁻¹·Bᵀ·v with the current B, D.
func (e *CMAES) invSqrtC(v []float64) []float64 {
	n := e.n
	t := make([]float64, n)
	for k := 0; k < n; k++ {
		var s float64
		for i := 0; i < n; i++ {
			s += e.b[i*n+k] * v[i]
		}
		t[k] = s / e.d[k]
	}
	out := make([]float64, n)
	for i := 0; i < n; i++ {
		var s float64
		for k := 0; k < n; k++ {
			s += e.b[i*n+k] * t[k]
		}
		out[i] = s
	}
	return out
}

// decompose refreshes B and D from C.
func (e *CMAES) decompose() error {
	n := e.n
	sym := mat.NewSymDense(n, slices.Clone(e.c))
	var eig mat.EigenSym
	if ok := eig.Factorize(sym, true); !ok {
		return errors.New("eigendecomposition of C failed")
	}
	vals := eig.Values(nil)
	var vmax float64
	for _, v := range vals {
		if !finite(v) {
			return fmt.Errorf("eigendecomposition of C: non-finite eigenvalue %v", v)
		}
		vmax = math.Max(vmax, v)
	}
	if !(vmax > 0) {
		return fmt.Errorf("covariance matrix is not positive definite (largest eigenvalue %v)", vmax)
	}
	// Bound the condition number of C, then move the overall scale of C into
	// σ when it drifts far from 1 (σ²C, p_c/√C and C^{-1/2}y are unchanged).
	floor := vmax / maxCondition
	capped := false
	lam := make([]float64, n)
	for k, v := range vals {
		if v < floor {
			v, capped = floor, true
		}
		lam[k] = v
	}
	rescale := vmax > 1e8 || vmax < 1e-8
	if rescale {
		t := math.Sqrt(vmax)
		e.sigma *= t
		for k := range lam {
			lam[k] /= vmax
		}
		for i := range e.pc {
			e.pc[i] /= t
		}
	}
	for k, v := range lam {
		e.d[k] = math.Sqrt(v)
	}
	var vec mat.Dense
	eig.VectorsTo(&vec)
	for i := 0; i < n; i++ {
		for k := 0; k < n; k++ {
			e.b[i*n+k] = vec.At(i, k)
		}
	}
	switch {
	case capped: // rebuild C = B·diag(λ)·Bᵀ to stay consistent with B, D
		for i := 0; i < n; i++ {
			for j := i; j < n; j++ {
				var v float64
				for k := 0; k < n; k++ {
					v += e.b[i*n+k] * lam[k] * e.b[j*n+k]
				}
				e.c[i*n+j] = v
				e.c[j*n+i] = v
			}
		}
	case rescale:
		for i := range e.c {
			e.c[i] /= vmax
		}
	}
	return nil
}

// CMAESState is the complete, JSON-friendly state of a CMAES; RestoreCMAES
// rebuilds an optimiser that continues bit for bit. The strategy parameters
// are recomputed from (N, Lambda). Matrices are n×n row-major; column k of B
// is the eigenvector for D[k]. Pending holds the steps y_k of an outstanding
// Ask (points are clip(Mean + Sigma·y_k)).
type CMAESState struct {
	Version         int         `json:"version"`
	N               int         `json:"n"`
	Lambda          int         `json:"lambda"`
	Minimize        bool        `json:"minimize"`
	Lo              []float64   `json:"lo,omitempty"`
	Hi              []float64   `json:"hi,omitempty"`
	Mean            []float64   `json:"mean"`
	Sigma           float64     `json:"sigma"`
	Sigma0          float64     `json:"sigma0"`
	C               []float64   `json:"c"`
	B               []float64   `json:"b"`
	D               []float64   `json:"d"`
	Ps              []float64   `json:"ps"`
	Pc              []float64   `json:"pc"`
	Generation      int         `json:"generation"`
	Evals           int         `json:"evals"`
	EigenGeneration int         `json:"eigen_generation"`
	Pending         [][]float64 `json:"pending,omitempty"`
	BestX           []float64   `json:"best_x,omitempty"`
	BestF           JSONFloat   `json:"best_f"`
	RNG             RNGState    `json:"rng"`
}

const cmaesStateVersion = 1

// State returns a deep copy of the optimiser's state. O(n² + λn).
func (e *CMAES) State() CMAESState {
	return CMAESState{
		Version: cmaesStateVersion, N: e.n, Lambda: e.lambda, Minimize: e.minimize,
		Lo: slices.Clone(e.lo), Hi: slices.Clone(e.hi),
		Mean: slices.Clone(e.mean), Sigma: e.sigma, Sigma0: e.sigma0,
		C: slices.Clone(e.c), B: slices.Clone(e.b), D: slices.Clone(e.d),
		Ps: slices.Clone(e.ps), Pc: slices.Clone(e.pc),
		Generation: e.gen, Evals: e.evals, EigenGeneration: e.eigenGen,
		Pending: clone2(e.pending),
		BestX:   slices.Clone(e.bestX), BestF: JSONFloat(e.bestF),
		RNG: e.rng.State(),
	}
}

// RestoreCMAES validates s (shapes, finiteness, σ > 0, D > 0, mean inside the
// box, counters) and returns an optimiser continuing from it. s is copied.
func RestoreCMAES(s CMAESState) (*CMAES, error) {
	fail := func(format string, a ...any) (*CMAES, error) {
		return nil, fmt.Errorf("search: RestoreCMAES: "+format, a...)
	}
	if s.Version != cmaesStateVersion {
		return fail("unsupported version %d", s.Version)
	}
	n := s.N
	if n < 1 || s.Lambda < 2 {
		return fail("need n >= 1 and lambda >= 2, got %d, %d", n, s.Lambda)
	}
	if n > 1<<15 || s.Lambda > 1<<24 {
		return fail("n=%d or lambda=%d is implausibly large", n, s.Lambda)
	}
	if err := checkBounds(s.Lo, s.Hi, n); err != nil {
		return fail("%w", err)
	}
	if len(s.Mean) != n {
		return fail("mean has length %d, want %d", len(s.Mean), n)
	}
	if err := checkInside(s.Mean, s.Lo, s.Hi, "mean"); err != nil {
		return fail("%w", err)
	}
	if !(s.Sigma > 0) || math.IsInf(s.Sigma, 0) || !(s.Sigma0 > 0) || math.IsInf(s.Sigma0, 0) {
		return fail("sigma and sigma0 must be finite and > 0, got %v, %v", s.Sigma, s.Sigma0)
	}
	for _, v := range []struct {
		name string
		x    []float64
		l    int
	}{{"c", s.C, n * n}, {"b", s.B, n * n}, {"d", s.D, n}, {"ps", s.Ps, n}, {"pc", s.Pc, n}} {
		if len(v.x) != v.l || !allFinite(v.x) {
			return fail("%s: need %d finite values, got %d", v.name, v.l, len(v.x))
		}
	}
	for k, v := range s.D {
		if !(v > 0) {
			return fail("d[%d] = %v must be > 0", k, v)
		}
	}
	if s.Generation < 0 || s.EigenGeneration < 0 || s.EigenGeneration > s.Generation || s.Evals < 0 {
		return fail("bad counters generation=%d eigen_generation=%d evals=%d", s.Generation, s.EigenGeneration, s.Evals)
	}
	if s.Pending != nil {
		if len(s.Pending) != s.Lambda {
			return fail("pending: %d steps, want %d", len(s.Pending), s.Lambda)
		}
		for k, y := range s.Pending {
			if len(y) != n || !allFinite(y) {
				return fail("pending[%d]: need %d finite values", k, n)
			}
		}
	}
	if s.BestX != nil {
		if len(s.BestX) != n || !allFinite(s.BestX) || !finite(float64(s.BestF)) {
			return fail("best_x/best_f: need %d finite values and a finite fitness", n)
		}
	}
	e := &CMAES{}
	e.setParams(n, s.Lambda, slices.Clone(s.Lo), slices.Clone(s.Hi), s.Minimize)
	e.mean, e.sigma, e.sigma0 = slices.Clone(s.Mean), s.Sigma, s.Sigma0
	e.c, e.b, e.d = slices.Clone(s.C), slices.Clone(s.B), slices.Clone(s.D)
	e.ps, e.pc = slices.Clone(s.Ps), slices.Clone(s.Pc)
	e.gen, e.evals, e.eigenGen = s.Generation, s.Evals, s.EigenGeneration
	e.pending = clone2(s.Pending)
	e.bestX, e.bestF = slices.Clone(s.BestX), float64(s.BestF)
	if s.BestX == nil {
		e.bestF = worst(s.Minimize)
	}
	e.rng = &RNG{}
	if err := e.rng.SetState(s.RNG); err != nil {
		return fail("%w", err)
	}
	return e, nil
}
