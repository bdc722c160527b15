package linalg

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// fma32 returns a·b + c rounded once to float32 (nearest, ties to even),
// as VFMADD231PS does. a·b is exact in float64; the float64 sum s and its
// error e (TwoSum) give the exact value s + e, and float32(s) is that value
// correctly rounded unless s is a float32 rounding tie, which e breaks.
func fma32(a, b, c float32) float32 {
	p, q := float64(a)*float64(b), float64(c)
	s := p + q
	bb := s - p
	e := (p - (s - bb)) + (q - bb)
	r := float32(s)
	if e == 0 || math.IsInf(s, 0) || float64(r) == s {
		return r
	}
	// The neighbour of r on s's side; s is a tie iff it is their midpoint.
	o := math.Nextafter32(r, float32(math.Copysign(math.Inf(1), s-float64(r))))
	if (float64(r)+float64(o))/2 != s {
		return r
	}
	if (e > 0) == (o > r) {
		return o
	}
	return r
}

// fma32Big is fma32 through math/big, the unarguable reference for fma32.
func fma32Big(a, b, c float32) float32 {
	x := new(big.Float).SetPrec(200).SetFloat64(float64(a))
	x.Mul(x, new(big.Float).SetFloat64(float64(b)))
	x.Add(x, new(big.Float).SetFloat64(float64(c)))
	f, _ := x.Float32()
	return f
}

// fma32 agrees with the math/big reference, ties and near-ties included:
// values built so that a·b + c falls next to a float32 midpoint, where
// rounding through float64 errs.
func TestFMA32Reference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	doubleRounding := 0
	for i := 0; i < 200000; i++ {
		a, b := float32(rng.NormFloat64()), float32(rng.NormFloat64())
		var c float32
		switch i % 3 {
		case 0:
			c = float32(rng.NormFloat64())
		case 1:
			// c = −RN(a·b) + tiny: the sum is the rounding error of a·b.
			c = -a * b
		case 2:
			// a·b = ±h·(1 − 2⁻⁴⁶), h half an ulp of c, c's last mantissa
			// bit odd: the exact sum lies 2⁻⁴⁶·h inside a float32 midpoint,
			// so it rounds in float64 onto the midpoint, and the tie
			// then goes to the even neighbour, on the wrong side.
			c = math.Float32frombits(math.Float32bits(float32(rng.NormFloat64())) | 1)
			h := (math.Nextafter32(c, float32(math.Inf(1))) - c) / 2
			if h < 0 {
				h = -h
			}
			a = h * (1 + 0x1p-23)
			b = 1 - 0x1p-23
			if i&1 != 0 {
				b = -b
			}
		}
		got, want := fma32(a, b, c), fma32Big(a, b, c)
		if math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("fma32(%v, %v, %v) = %v, want %v", a, b, c, got, want)
		}
		if float32(float64(a)*float64(b)+float64(c)) != want {
			doubleRounding++ // float64 then float32 gets this one wrong
		}
	}
	if doubleRounding == 0 {
		t.Fatal("no case where rounding through float64 goes wrong: the tie cases do not test the tie path")
	}
}

// gemmRefFMA is the fused family's definition of gemm: one fma chain per
// element in k order, no zero skipping.
func gemmRefFMA(m, n, k int, a, b operand, beta float32, c operand) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			s := scaleBeta(beta, c.at(i, j))
			for p := 0; p < k; p++ {
				s = fma32(a.at(i, p), b.at(p, j), s)
			}
			c.set(i, j, s)
		}
	}
}

// Every fused assembly kernel the CPU runs gives the bits of gemmRefFMA,
// for odd shapes and edge tiles, every transpose (A read in place or
// packed, the product run as Cᵀ = Bᵀ·Aᵀ), β ∈ {0, 1, 0.5}, k over several
// k blocks of either kernel, short-wide and tall C, and 1 or 5 threads: the results do not depend on the thread count, the tile shape,
// the task split or the k blocking.
func TestGemmFusedBitsMatchDefinition(t *testing.T) {
	ks := fmaKernels()
	if len(ks) == 0 {
		t.Skip("no assembly FMA kernels in this build or on this CPU")
	}
	shapes := []struct{ m, n, k int }{
		{1, 1, 1}, {5, 80, 7}, {6, 16, 3}, {7, 9, 13}, {11, 81, 129}, {31, 33, 257},
		{65, 130, 74}, {2, 161, 3}, {33, 74, 600}, {13, 17, 1100}, {41, 1, 37}, {5, 4, 0}, {0, 3, 2}, {4, 0, 2},
		// m (or n, when the product is run transposed) above
		// gemmShortWide: row blocks sharing one packed B.
		{gemmShortWide + 31, 37, 70}, {23, gemmShortWide + 9, 65},
	}
	for si, sh := range shapes {
		for layout := range 8 {
			aT, bT, cT := layout&1 != 0, layout&2 != 0, layout&4 != 0
			// One β per (shape, layout), in turn: each layout sees every β
			// over the shapes, at a third of the reference's cost.
			for _, beta := range []float32{[]float32{0, 1, 0.5}[(si+layout)%3]} {
				rng := rand.New(rand.NewPCG(uint64(si), uint64(layout)))
				a := randOperand(rng, sh.m, sh.k, aT, []float64{0, 0.3}[layout%2])
				b := randOperand(rng, sh.k, sh.n, bT, 0.1)
				c0 := randOperand(rng, sh.m, sh.n, cT, 0)
				if beta == 0 && len(c0.data) > 0 {
					c0.data[0] = float32(math.NaN()) // ignored when β = 0
				}
				want := c0
				want.data = slices.Clone(c0.data)
				gemmRefFMA(sh.m, sh.n, sh.k, a, b, beta, want)
				for _, kern := range ks {
					for _, threads := range []int{1, 5} {
						got := c0
						got.data = slices.Clone(c0.data)
						gemmWith(parallel.Pool{Threads: threads}, kern, sh.m, sh.n, sh.k, a, b, beta, got)
						if i := firstBitDiff(got.data, want.data); i >= 0 {
							t.Fatalf("%dx%dx%d aT=%v bT=%v cT=%v β=%v: kernel %s, %d threads: element %d = %v, want %v",
								sh.m, sh.n, sh.k, aT, bT, cT, beta, kern.name, threads, i, got.data[i], want.data[i])
						}
					}
				}
			}
		}
	}
}

// firstBitDiff returns the first index where x and y differ in bits, or −1.
func firstBitDiff(x, y []float32) int {
	for i := range x {
		if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
			return i
		}
	}
	return -1
}

// fusedPortableBound is the documented bound on |fused − portable| for one
// element: 3·K·2⁻²⁴·(|β·c| + Σ_p |a_p·b_p|).
func fusedPortableBound(k int, betaC float64, absSum float64) float64 {
	return 3 * float64(k) * 0x1p-24 * (math.Abs(betaC) + absSum)
}

// On random shapes, layouts and scales, gemm's default kernel and the
// portable kernel agree within fusedPortableBound element by element, and
// the default kernel gives the same bits on 1 and 3 threads. (The bound is
// about 3·K times the rounding unit; a lost or doubled term, a wrong
// column or a stale tile is off by orders of magnitude more.)
func TestGemmFusedVsPortableBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	best, port := bestKernel(), portableKernel()
	t.Logf("default kernel %s, portable %s", best.name, port.name)
	worst := 0.0
	for it := 0; it < 40; it++ {
		m, n, k := 1+rng.IntN(70), 1+rng.IntN(170), 1+rng.IntN(400)
		aT, bT, cT := rng.IntN(2) == 1, rng.IntN(2) == 1, rng.IntN(2) == 1
		beta := []float32{0, 1, -0.75}[rng.IntN(3)]
		scale := float32(math.Ldexp(1, rng.IntN(40)-20))
		a := randOperand(rng, m, k, aT, 0.05)
		for i := range a.data {
			a.data[i] *= scale
		}
		b := randOperand(rng, k, n, bT, 0)
		c0 := randOperand(rng, m, n, cT, 0)
		got, want, again := c0, c0, c0
		got.data, want.data, again.data = slices.Clone(c0.data), slices.Clone(c0.data), slices.Clone(c0.data)
		gemmWith(parallel.Pool{Threads: 1}, best, m, n, k, a, b, beta, got)
		gemmWith(parallel.Pool{Threads: 3}, best, m, n, k, a, b, beta, again)
		gemmWith(parallel.Pool{Threads: 2}, port, m, n, k, a, b, beta, want)
		if i := firstBitDiff(got.data, again.data); i >= 0 {
			t.Fatalf("case %d (%d×%d×%d): 1 and 3 threads differ at element %d: %v vs %v", it, m, n, k, i, got.data[i], again.data[i])
		}
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				abs := 0.0
				for p := 0; p < k; p++ {
					abs += math.Abs(float64(a.at(i, p)) * float64(b.at(p, j)))
				}
				bc := float64(scaleBeta(beta, c0.at(i, j)))
				d := math.Abs(float64(got.at(i, j)) - float64(want.at(i, j)))
				bound := fusedPortableBound(k, bc, abs)
				if d > bound {
					t.Fatalf("case %d (%d×%d×%d, aT=%v bT=%v cT=%v β=%v): element (%d, %d): fused %v, portable %v, |diff| %.3g > bound %.3g",
						it, m, n, k, aT, bT, cT, beta, i, j, got.at(i, j), want.at(i, j), d, bound)
				}
				if bound > 0 {
					worst = max(worst, d/bound)
				}
			}
		}
	}
	t.Logf("largest |fused − portable| / bound: %.3g", worst)
}

// The bound test can fail: a product missing its last k term exceeds it.
func TestGemmFusedBoundDetectsDroppedTerm(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	const m, n, k = 9, 21, 300
	a := randOperand(rng, m, k, false, 0)
	b := randOperand(rng, k, n, false, 0)
	full := operand{data: make([]float32, m*n), ld: n}
	short := operand{data: make([]float32, m*n), ld: n}
	gemmWith(parallel.Pool{}, bestKernel(), m, n, k, a, b, 0, full)
	aShort := operand{data: a.data, ld: a.ld}
	gemmWith(parallel.Pool{}, portableKernel(), m, n, k-1, aShort, b, 0, short)
	exceeded := 0
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			abs := 0.0
			for p := 0; p < k; p++ {
				abs += math.Abs(float64(a.at(i, p)) * float64(b.at(p, j)))
			}
			if math.Abs(float64(full.at(i, j))-float64(short.at(i, j))) > fusedPortableBound(k, 0, abs) {
				exceeded++
			}
		}
	}
	if exceeded < m*n/2 {
		t.Fatalf("only %d of %d elements missing a term exceed the bound", exceeded, m*n)
	}
}

// The fused kernels called directly on one tile: kc = 0 leaves the tile
// alone, and a kc > 0 call matches the fma chain, for every kernel.
func TestFMAKernelsOneTile(t *testing.T) {
	for _, kern := range fmaKernels() {
		for _, kc := range []int{0, 1, 2, 7, 64} {
			t.Run(fmt.Sprintf("%s/kc=%d", kern.name, kc), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(kc), 9))
				ap, bp := make([]float32, kern.mr*kc), make([]float32, kern.nr*kc)
				acc := make([]float32, kern.mr*kern.nr)
				for _, s := range [][]float32{ap, bp, acc} {
					for i := range s {
						s[i] = float32(rng.NormFloat64())
					}
				}
				want := slices.Clone(acc)
				for p := 0; p < kc; p++ {
					for r := 0; r < kern.mr; r++ {
						for c := 0; c < kern.nr; c++ {
							want[r*kern.nr+c] = fma32(ap[p*kern.mr+r], bp[p*kern.nr+c], want[r*kern.nr+c])
						}
					}
				}
				kern.fn(kc, ap, bp, acc)
				if i := firstBitDiff(acc, want); i >= 0 {
					t.Fatalf("element %d = %v, want %v", i, acc[i], want[i])
				}
			})
		}
	}
}
