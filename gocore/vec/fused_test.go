package vec

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
)

// mergeTasksRef is MergeTasks composed of the separate scalar loops, as the
// merge engine's general path runs them: Sub, the band mask (bandMask's
// loop), the rescale, DisjointMean or WeightedSum, then θ₀ + λ·c and the
// consensus masks.
func mergeTasksRef(out, base []float32, x [][]float32, p TaskMerge) {
	n := len(out)
	T := len(x)
	taus := make([][]float32, T)
	for m := range T {
		tau := make([]float32, n)
		subGo(tau, x[m], base)
		if p.Bands != nil {
			in, o := p.Bands[m].In, p.Bands[m].Out
			for j, v := range tau {
				a := math.Float32bits(v) & 0x7fffffff
				inner := a > in.Bits
				if !inner && a == in.Bits && in.Allow != 0 {
					in.Allow--
					inner = true
				}
				outer := a > o.Bits
				if !outer && a == o.Bits && o.Allow != 0 {
					o.Allow--
					outer = true
				}
				if !inner || outer {
					tau[j] = 0
				}
			}
		}
		if p.Drop != nil {
			// The engine's DARE: DareDrop with the rescale factor.
			scale := float32(1)
			if p.Scale != nil {
				scale = p.Scale[m]
			}
			dareDropGo(tau, p.Drop[m].Key, p.Start, p.Drop[m].Thr, scale)
		} else if p.Scale != nil && p.Scale[m] != 1 {
			for j := range tau {
				tau[j] *= p.Scale[m]
			}
		}
		taus[m] = tau
	}
	c := make([]float32, n)
	if p.Disjoint {
		disjointMeanGo(c, taus, p.W, p.Norm)
	} else {
		weightedSumGo(c, taus, p.W, 1)
		if p.DivOn {
			for j := range c {
				c[j] /= p.Div
			}
		}
	}
	for j, b := range base[:n] {
		r := b + float32(p.Lam*c[j])
		if p.TallLam != nil {
			active := 0
			for m := range T {
				raw := x[m][j] - b
				if abs32(raw) >= float32(p.TallLam[m]*abs32(c[j]-raw)) {
					active++
				}
			}
			if active < p.K {
				r = b
			}
		}
		out[j] = r
	}
}

// bandsFor draws keep rules with the bits of values present in the data
// (so that allowances are consumed), Everything and Nothing.
func bandsFor(r *rand.Rand, x [][]float32, base []float32) []Band {
	pick := func(m int) Cut {
		switch r.IntN(6) {
		case 0:
			return Everything
		case 1:
			return Nothing
		}
		var bits uint32
		if len(base) > 0 {
			j := r.IntN(len(base))
			bits = math.Float32bits(x[m][j]-base[j]) & 0x7fffffff
		}
		return Cut{Bits: bits, Allow: r.IntN(12) - 2}
	}
	bs := make([]Band, len(x))
	for m := range bs {
		bs[m] = Band{In: pick(m), Out: Nothing}
		if r.IntN(2) == 0 {
			bs[m].Out = pick(m)
		}
	}
	return bs
}

func TestMergeTasksMatchesSeparateLoops(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{0, 1, 7, 8, 9, 33, 250, 4096} {
		for _, T := range []int{1, 2, 3, 5, 8} {
			for trial := range 12 {
				base := coarse(r, n)
				x := make([][]float32, T)
				w := make([]float32, T)
				for m := range x {
					x[m] = coarse(r, n)
					w[m] = []float32{1, 0.5, -1, 2, 0}[(m+trial)%5]
				}
				p := TaskMerge{W: w, Lam: []float32{1, 0.7, -2}[trial%3]}
				if trial%2 == 0 {
					p.Bands = bandsFor(r, x, base)
				}
				if trial%4 == 1 {
					p.Scale = make([]float32, T)
					for m := range p.Scale {
						p.Scale[m] = []float32{1, 1.5, 0.25}[m%3]
					}
				}
				switch trial % 3 {
				case 0:
					p.Disjoint, p.Norm = true, trial%2 == 1
				case 1:
					p.Disjoint = true
				default:
					p.DivOn, p.Div = trial%2 == 0, 1.5
				}
				if trial >= 6 {
					p.TallLam = make([]float32, T)
					for m := range p.TallLam {
						p.TallLam[m] = []float32{0.4, 0, 1}[m%3]
					}
					p.K = trial % 4
				}
				if trial%5 == 2 {
					// DARE: a random drop per model (thresholds from
					// density 0.1 to 1), alone or after bands.
					p.Drop = make([]Drop, T)
					for m := range p.Drop {
						p.Drop[m] = Drop{Key: r.Uint64(), Thr: DareThreshold([]float32{0.1, 0.5, 1, 0.9}[(m+trial)%4])}
					}
					p.Start = uint64(r.IntN(1 << 30))
				}
				name := fmt.Sprintf("n=%d T=%d trial=%d", n, T, trial)
				if trial%4 == 3 {
					// bfloat16 inputs: the data rounded to bfloat16, and
					// MergeTasksBF16 (and its scalar twin) reading them.
					name += " bf16"
					base = roundBF16(base)
					for m := range x {
						x[m] = roundBF16(x[m])
					}
				}
				want := make([]float32, n)
				ref := p
				ref.Bands = slices.Clone(p.Bands)
				mergeTasksRef(want, base, x, ref)
				impls := []struct {
					name string
					f    func(out, base []float32, x [][]float32, p *TaskMerge) bool
				}{{"MergeTasks", MergeTasks}, {"mergeTasksGo", mergeTasksGo}}
				if trial%4 == 3 {
					impls = append(impls, struct {
						name string
						f    func(out, base []float32, x [][]float32, p *TaskMerge) bool
					}{"MergeTasksBF16", func(out, base []float32, x [][]float32, p *TaskMerge) bool {
						b16, x16 := bf16Of(base), make([][]uint16, len(x))
						for m := range x {
							x16[m] = bf16Of(x[m])
						}
						return MergeTasksBF16(out, b16, x16, p)
					}}, struct {
						name string
						f    func(out, base []float32, x [][]float32, p *TaskMerge) bool
					}{"mergeTasksGoBF16", func(out, base []float32, x [][]float32, p *TaskMerge) bool {
						q := *p
						q.base16, q.x16 = bf16Of(base), make([][]uint16, len(x))
						for m := range x {
							q.x16[m] = bf16Of(x[m])
						}
						return mergeTasksGoBF16(out, &q)
					}})
				}
				for _, impl := range impls {
					got := make([]float32, n)
					q := p
					q.Bands = slices.Clone(p.Bands)
					if !impl.f(got, base, x, &q) {
						t.Fatalf("%s %s: reports a non-finite result", name, impl.name)
					}
					sameBits(t, name+" "+impl.name, got, want)
				}
			}
		}
	}
}

func TestMergeTasksReportsNonFinite(t *testing.T) {
	const n = 100
	base := make([]float32, n)
	x := [][]float32{make([]float32, n), make([]float32, n)}
	for _, at := range []int{3, 64, 99} {
		for _, check := range []bool{false, true} {
			for _, where := range []string{"base", "model", "result"} {
				b, x0 := slices.Clone(base), slices.Clone(x[0])
				lam := float32(1)
				switch where {
				case "base":
					b[at] = float32(math.Inf(1))
				case "model":
					x0[at] = float32(math.NaN())
				case "result":
					x0[at] = 3e38
					lam = 10
				}
				// TALL masks that keep the base: a bad input need not
				// reach the result, only the check finds it.
				p := TaskMerge{W: []float32{1, 1}, Lam: lam, TallLam: []float32{1, 1}, K: 3, Check: check}
				out := make([]float32, n)
				got := MergeTasks(out, b, [][]float32{x0, x[1]}, &p)
				bad := where == "base" || (where == "model" && check)
				if got == bad {
					t.Fatalf("at %d check=%v %s: finite = %v", at, check, where, got)
				}
				p.TallLam = nil
				if MergeTasks(out, b, [][]float32{x0, x[1]}, &p) {
					t.Fatalf("at %d check=%v %s: a non-finite result reported finite", at, check, where)
				}
			}
		}
	}
}

func TestCountDiffWindowsMatchesScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	wins := [][2]uint32{{0, 0}, {0, 0x3f800000}, {0x3f000000, 0x3fc00000}, {0x40000000, 0x7fffffff}, {1, 0x80000000}, {0, math.MaxUint32}}
	for _, n := range []int{0, 1, 7, 8, 9, 33, 250, 4096} {
		x, b := coarse(r, n), coarse(r, n)
		mags := make([]float32, n)
		absDiffGo(mags, x, b)
		for k := 0; k <= len(wins); k++ {
			for start := range 2 {
				ws := wins[start:min(start+k, len(wins))]
				lo, hi := make([]uint32, len(ws)), make([]uint32, len(ws))
				for i, w := range ws {
					lo[i], hi[i] = w[0], w[1]
				}
				above := make([]int64, len(ws))
				cands := make([][]uint32, len(ws))
				if !CountDiffWindows(x, b, lo, hi, above, cands) {
					t.Fatalf("n=%d: finite input reported non-finite", n)
				}
				for i, w := range ws {
					wa, wc := countWindowGo(mags, w[0], w[1], nil)
					if above[i] != wa || !slices.Equal(cands[i], wc) {
						t.Fatalf("n=%d window %x: %d, %v; want %d, %v", n, w, above[i], cands[i], wa, wc)
					}
				}
			}
		}
		if n > 0 {
			for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
				y := slices.Clone(x)
				y[n-1] = bad
				if CountDiffWindows(y, b, []uint32{0}, []uint32{0x3f800000}, make([]int64, 1), make([][]uint32, 1)) {
					t.Fatalf("n=%d: %v not reported", n, bad)
				}
			}
		}
	}
}

func TestMeanLerpMatchesScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	for _, n := range []int{0, 1, 7, 8, 9, 33, 250, 4096} {
		for _, T := range []int{1, 2, 3, 9} {
			base := coarse(r, n)
			x := make([][]float32, T)
			for m := range x {
				x[m] = coarse(r, n)
			}
			got, want := make([]float32, n), make([]float32, n)
			// The model_stock combine of the general path.
			for j := range want {
				var s float32
				for _, xm := range x {
					s += xm[j]
				}
				avg := s / float32(T)
				want[j] = float32(0.3*avg) + float32(0.7*base[j])
			}
			if !MeanLerp(got, base, x, 0.3, 0.7) {
				t.Fatalf("n=%d T=%d: reports a non-finite result", n, T)
			}
			sameBits(t, fmt.Sprintf("MeanLerp n=%d T=%d", n, T), got, want)
			if n > 0 {
				x[0][n/2] = float32(math.Inf(1))
				if MeanLerp(got, base, x, 0.3, 0.7) {
					t.Fatalf("n=%d T=%d: Inf not reported", n, T)
				}
			}
		}
	}
}

// TestTaskGramsMatchesDsdot compares TaskGrams with the separate loops it
// replaces (Sub, then gonum's Dsdot per pair), bit for bit; where it
// declines (the plain build, lengths that are not a multiple of 8, a NaN),
// it must say so.
func TestTaskGramsMatchesDsdot(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	for _, n := range []int{0, 7, 8, 16, 40, 4096, 16384} {
		for _, T := range []int{1, 2, 3, 4, 5, 8, 9} {
			base := make([]float32, n)
			for j := range base {
				base[j] = float32(r.NormFloat64())
			}
			x := make([][]float32, T)
			taus := make([][]float32, T)
			for m := range x {
				x[m] = make([]float32, n)
				for j := range x[m] {
					x[m][j] = base[j] + float32(0.01*r.NormFloat64())
				}
				taus[m] = make([]float32, n)
				subGo(taus[m], x[m], base)
			}
			g := make([]float64, T*(T+1)/2)
			ok := TaskGrams(g, base, x)
			if want := accelerated && n%8 == 0 && T <= 8; ok != want {
				t.Fatalf("n=%d T=%d: TaskGrams reports %v, want %v", n, T, ok, want)
			}
			if !ok {
				continue
			}
			p := 0
			for a := range T {
				for b := a; b < T; b++ {
					want := gonum.Implementation{}.Dsdot(n, taus[a], 1, taus[b], 1)
					if math.Float64bits(g[p]) != math.Float64bits(want) {
						t.Fatalf("n=%d T=%d pair (%d, %d): %v, Dsdot %v", n, T, a, b, g[p], want)
					}
					p++
				}
			}
			if n > 0 {
				x[T-1][n-1] = float32(math.NaN())
				if TaskGrams(g, base, x) {
					t.Fatalf("n=%d T=%d: a NaN not reported", n, T)
				}
			}
		}
	}
}

// roundBF16 is x rounded to bfloat16 (as float32).
func roundBF16(x []float32) []float32 {
	y := make([]float32, len(x))
	for j, v := range x {
		y[j] = math.Float32frombits(uint32(BF16Bits(v)) << 16)
	}
	return y
}

// bf16Of is x (bfloat16 values) as bfloat16 bits.
func bf16Of(x []float32) []uint16 {
	y := make([]uint16, len(x))
	for j, v := range x {
		y[j] = uint16(math.Float32bits(v) >> 16)
	}
	return y
}
