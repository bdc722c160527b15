package nps

import (
	"fmt"
	"math"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/topk"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// Kind selects how tensors are split into subspaces.
type Kind int

const (
	// KindSVD splits 2-D (and higher, as rows × the rest) tensors into SVD
	// rank bands plus the residual, and 1-D tensors into magnitude bands.
	KindSVD Kind = iota
	// KindMagnitude splits every tensor into magnitude bands.
	KindMagnitude
)

// ParseKind maps "svd" and "magnitude" to a Kind.
func ParseKind(s string) (Kind, error) {
	switch s {
	case "", "svd":
		return KindSVD, nil
	case "magnitude":
		return KindMagnitude, nil
	}
	return 0, fmt.Errorf("unknown subspace kind %q (want \"svd\" or \"magnitude\")", s)
}

// ErrInput marks bad arguments.
var ErrInput = fault.New(fault.InvalidInput, "invalid NPS input")

// Options configure Decompose.
type Options struct {
	// Subspaces is M ≥ 1, the number of subspaces per tensor.
	Subspaces int
	// Kind of split.
	Kind Kind
	// Rank R of the truncated SVD; 0 means 2^(M−2), the upper edge of the
	// last geometric band (clamped to min(rows, cols)).
	Rank int
	// PowerIters and Oversample of the randomized SVD (0: linalg's defaults).
	PowerIters, Oversample int
	// Seed of the randomized SVD's sketch (per tensor: Seed + tensor index).
	Seed uint64
	// Pool is the thread count of Decompose and of the decomposition's
	// Build (zero value: the process default); results do not depend on it.
	Pool parallel.Pool
}

// Config is Options as both doors decode them from JSON (pybind's
// NPSDecompose, the daemon's NPS jobs): Kind by name, no pool.
type Config struct {
	// Subspaces M (the daemon's default 8); Kind "svd" (default) or
	// "magnitude"; Rank, PowerIters, Oversample and Seed of the randomized
	// SVD.
	Subspaces  int    `json:"subspaces,omitempty"`
	Kind       string `json:"kind,omitempty"`
	Rank       int    `json:"rank,omitempty"`
	PowerIters int    `json:"power_iters,omitempty"`
	Oversample int    `json:"oversample,omitempty"`
	Seed       uint64 `json:"seed,omitempty"`
}

// Options are c's Options with pool; an unknown kind is an error wrapping
// ErrInput.
func (c Config) Options(pool parallel.Pool) (Options, error) {
	kind, err := ParseKind(c.Kind)
	if err != nil {
		return Options{}, fmt.Errorf("%w: %v", ErrInput, err)
	}
	return Options{Subspaces: c.Subspaces, Kind: kind, Rank: c.Rank, PowerIters: c.PowerIters,
		Oversample: c.Oversample, Seed: c.Seed, Pool: pool}, nil
}

// Input is one tensor's task vector. Decompose keeps Tau (it does not copy
// it); the caller must not change it afterwards.
type Input struct {
	Name  string
	Shape []int
	Tau   []float32
}

// Decomposition holds every tensor's subspaces.
type Decomposition struct {
	m       int
	tensors []decomp
	total   int64
	pool    parallel.Pool
}

type decomp struct {
	name       string
	rows, cols int
	tau        []float32
	svd        *linalg.SVD // nil for magnitude bands
	band       []int       // svd: band of each singular direction
	thresholds []uint32    // magnitude: |x| bits ≥ thresholds[b] ⇒ band ≤ b (descending)
}

// Decompose splits every input into opt.Subspaces subspaces. Cost: one
// randomized SVD per matrix (see linalg.RandomizedSVD) or M−1 radix
// selections per magnitude-banded tensor.
func Decompose(inputs []Input, opt Options) (*Decomposition, error) {
	M := opt.Subspaces
	if M < 1 {
		return nil, fmt.Errorf("%w: subspaces must be ≥ 1, got %d", ErrInput, M)
	}
	d := &Decomposition{m: M, pool: opt.Pool}
	for i, in := range inputs {
		rows, cols := shape2(in.Shape, len(in.Tau))
		if rows*cols != len(in.Tau) {
			return nil, fmt.Errorf("%w: tensor %q: shape %v does not hold %d elements", ErrInput, in.Name, in.Shape, len(in.Tau))
		}
		if k := firstNonFinite(in.Tau); k >= 0 {
			return nil, fmt.Errorf("%w: tensor %q: task vector has %v at flat index %d", ErrInput, in.Name, in.Tau[k], k)
		}
		t := decomp{name: in.Name, rows: rows, cols: cols, tau: in.Tau}
		d.total += int64(len(in.Tau))
		if opt.Kind == KindSVD && rows > 1 && cols > 1 && M > 1 {
			r := opt.Rank
			if r <= 0 {
				r = 1 << max(M-2, 0)
			}
			r = min(r, rows, cols)
			s, err := linalg.RandomizedSVD(linalg.Matrix{Rows: rows, Cols: cols, Data: in.Tau},
				linalg.Options{Rank: r, Oversample: opt.Oversample, PowerIters: opt.PowerIters, Seed: opt.Seed + uint64(i), Pool: opt.Pool})
			if err != nil {
				return nil, fmt.Errorf("tensor %q: %w", in.Name, err)
			}
			t.svd = &s
			t.band = make([]int, len(s.S))
			for j := range t.band {
				t.band[j] = min(RankBand(j), M-2)
			}
		} else {
			t.thresholds = magnitudeBands(opt.Pool, in.Tau, M)
		}
		d.tensors = append(d.tensors, t)
	}
	return d, nil
}

// RankBand is the geometric band of singular direction j (0-based):
// 0 → 0, 1 → 1, 2–3 → 2, 4–7 → 3, …
func RankBand(j int) int {
	b := 0
	for j > 0 {
		j >>= 1
		b++
	}
	return b
}

// shape2 views a shape as rows × the rest (PyTorch's out × in·kh·kw).
func shape2(shape []int, n int) (int, int) {
	if len(shape) < 2 {
		return 1, n
	}
	if shape[0] == 0 {
		return 0, 0
	}
	return shape[0], n / shape[0]
}

// magnitudeBands returns M−1 descending thresholds cutting |x| into M
// equal-count bands (band 0 = largest magnitudes). Entries equal to a
// threshold go to the band above it, so counts are equal up to ties.
func magnitudeBands(pool parallel.Pool, x []float32, M int) []uint32 {
	th := make([]uint32, M-1)
	n := int64(len(x))
	src, nc := chunkSource(x)
	for b := 0; b < M-1; b++ {
		k := n * int64(b+1) / int64(M)
		cut := topk.Select(k, n, nc, src, pool.Size())
		switch {
		case cut.None:
			th[b] = math.MaxUint32 // nothing in this band
		case cut.All:
			th[b] = 0
		default:
			th[b] = cut.Bits
		}
	}
	return th
}

func chunkSource(x []float32) (topk.Source, int) {
	return func(c int, dst []uint32) []uint32 {
		lo, hi := c*parallel.Chunk, min((c+1)*parallel.Chunk, len(x))
		dst = dst[:hi-lo]
		for j, v := range x[lo:hi] {
			dst[j] = topk.AbsBits(v)
		}
		return dst
	}, parallel.NumChunks(len(x))
}

func firstNonFinite(x []float32) int {
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return i
		}
	}
	return -1
}

// Subspaces is M.
func (d *Decomposition) Subspaces() int { return d.m }

// Len is the number of tensors.
func (d *Decomposition) Len() int { return len(d.tensors) }

// NumElements is the total number of entries over all tensors.
func (d *Decomposition) NumElements() int64 { return d.total }

// TensorInfo describes tensor i's decomposition: its name, element count,
// SVD rank (0 for magnitude bands).
func (d *Decomposition) TensorInfo(i int) (name string, n int, rank int) {
	t := &d.tensors[i]
	if t.svd != nil {
		rank = len(t.svd.S)
	}
	return t.name, len(t.tau), rank
}

// Weights gives the subspace weights of one candidate: Shared (length M)
// for all tensors, or PerTensor (one length-M slice per tensor).
type Weights struct {
	Shared    []float64
	PerTensor [][]float64
}

func (w Weights) of(i int) []float64 {
	if w.PerTensor != nil {
		return w.PerTensor[i]
	}
	return w.Shared
}

// Build writes the candidate τ_NPS = mask ⊙ τ' of every tensor into out
// (one float32 slice per tensor, the tensor's length; caller-provided and
// fully overwritten), where τ' = Σ_m w_m q_m and the mask keeps the top
// ⌊keep·n⌋ entries of |τ'| (ties by lower index), over all tensors together
// when global is set, per tensor otherwise. It returns how many entries
// were kept. Cost: one 2·rows·cols·R-flop GEMM per SVD-banded tensor, one
// pass per magnitude-banded tensor, and a radix select (two or three reads).
func (d *Decomposition) Build(w Weights, keep float64, global bool, out [][]float32) (int64, error) {
	if !(keep > 0 && keep <= 1) {
		return 0, fmt.Errorf("%w: keep must lie in (0, 1], got %v", ErrInput, keep)
	}
	if len(out) != len(d.tensors) {
		return 0, fmt.Errorf("%w: %d output buffers for %d tensors", ErrInput, len(out), len(d.tensors))
	}
	if w.PerTensor != nil && len(w.PerTensor) != len(d.tensors) {
		return 0, fmt.Errorf("%w: %d per-tensor weight sets for %d tensors", ErrInput, len(w.PerTensor), len(d.tensors))
	}
	for i := range d.tensors {
		if len(w.of(i)) != d.m {
			return 0, fmt.Errorf("%w: %d weights for %d subspaces", ErrInput, len(w.of(i)), d.m)
		}
		if len(out[i]) != len(d.tensors[i].tau) {
			return 0, fmt.Errorf("%w: tensor %q: output has %d elements, want %d", ErrInput, d.tensors[i].name, len(out[i]), len(d.tensors[i].tau))
		}
	}
	for i := range d.tensors {
		if err := d.tensors[i].reweight(d.pool, w.of(i), out[i]); err != nil {
			return 0, err
		}
	}
	return prune(d.pool, out, keep, global), nil
}

// reweight writes τ' = Σ_m w_m q_m into dst.
func (t *decomp) reweight(pool parallel.Pool, w []float64, dst []float32) error {
	M := len(w)
	if t.svd == nil {
		ws := make([]float32, M)
		for i, v := range w {
			ws[i] = float32(v)
		}
		th := t.thresholds
		pool.For(parallel.NumChunks(len(t.tau)), func(_, c int) {
			lo, hi := c*parallel.Chunk, min((c+1)*parallel.Chunk, len(t.tau))
			for j, x := range t.tau[lo:hi] {
				a := topk.AbsBits(x)
				b := 0
				for b < len(th) && a < th[b] {
					b++
				}
				dst[lo+j] = ws[b] * x
			}
		})
		return nil
	}
	wRes := float32(w[M-1])
	// dst = w_M·τ in one parallel pass, then dst += U·diag(c)·Vᵀ (linalg's
	// GEMM, beta = 1): together the float32 operations, in the same order,
	// of linalg.ApplyWeighted(τ copy, U, c, Vᵀ, w_M).
	pool.For(parallel.NumChunks(len(t.tau)), func(_, c int) {
		lo, hi := c*parallel.Chunk, min((c+1)*parallel.Chunk, len(t.tau))
		d := dst[lo:hi]
		switch wRes {
		case 1:
			copy(d, t.tau[lo:hi])
			return
		case 0:
			clear(d) // as BLAS does for beta = 0 (no −0 from 0·(−x))
			return
		}
		vec.Scale(d, t.tau[lo:hi], wRes)
	})
	coef := make([]float32, len(t.svd.S))
	for j, s := range t.svd.S {
		coef[j] = (float32(w[t.band[j]]) - wRes) * s
	}
	if err := linalg.ApplyWeighted(pool, dst, t.svd.U, coef, t.svd.Vt, 1); err != nil {
		return fmt.Errorf("tensor %q: %w", t.name, err)
	}
	return nil
}

// prune zeroes all but the top ⌊keep·n⌋ magnitudes of xs (jointly when
// global) and returns how many it kept.
func prune(pool parallel.Pool, xs [][]float32, keep float64, global bool) int64 {
	type ref struct{ t, lo, hi int }
	var kept int64
	run := func(group []int) {
		var chunks []ref
		var n int64
		for _, t := range group {
			for lo := 0; lo < len(xs[t]); lo += parallel.Chunk {
				chunks = append(chunks, ref{t, lo, min(lo+parallel.Chunk, len(xs[t]))})
			}
			n += int64(len(xs[t]))
		}
		k := int64(keep * float64(n))
		src := func(c int, dst []uint32) []uint32 {
			r := chunks[c]
			dst = dst[:r.hi-r.lo]
			vec.AbsBits(dst, xs[r.t][r.lo:r.hi])
			return dst
		}
		cut := topk.Select(k, n, len(chunks), src, pool.Size())
		if cut.All {
			kept += n
			return
		}
		pool.For(len(chunks), func(_, c int) {
			r := chunks[c]
			x := xs[r.t][r.lo:r.hi]
			if cut.None {
				clear(x)
				return
			}
			vec.KeepTop(x, cut.Bits, cut.Allow(c))
		})
		kept += k
	}
	if global {
		all := make([]int, len(xs))
		for i := range all {
			all[i] = i
		}
		run(all)
	} else {
		for i := range xs {
			run([]int{i})
		}
	}
	return kept
}
