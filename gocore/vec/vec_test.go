package vec

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func randSlices(r *rand.Rand, t, n int) (base []float32, x [][]float32, w []float32) {
	base = make([]float32, n)
	for j := range base {
		base[j] = float32(r.NormFloat64())
	}
	for range t {
		xm := make([]float32, n)
		for j := range xm {
			xm[j] = base[j] + float32(0.01*r.NormFloat64())
		}
		x = append(x, xm)
		w = append(w, float32(r.Float64()*2-0.5))
	}
	return base, x, w
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for j := range want {
		if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
			t.Fatalf("%s: entry %d is %v, want %v (accelerated=%v)", what, j, got[j], want[j], Accelerated())
		}
	}
}

// TestLoopsMatchScalar checks that the exported loops (vectorised when the
// build allows) give the scalar reference's bits for every input count and
// for lengths around the vector width.
func TestLoopsMatchScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 7, 8, 9, 31, 32, 33, 1000, 16384} {
		for _, T := range []int{1, 2, 3, 4, 5, 9} {
			base, x, w := randSlices(r, T, n)
			got, want := make([]float32, n), make([]float32, n)
			for _, lam := range []float32{1, 0.3} {
				DeltaSum(got, base, x, w, lam)
				deltaSumGo(want, base, x, w, lam)
				sameBits(t, "DeltaSum", got, want)
				WeightedSum(got, x, w, lam)
				weightedSumGo(want, x, w, lam)
				sameBits(t, "WeightedSum", got, want)
			}
			Sub(got, x[0], base)
			for j := range want {
				want[j] = x[0][j] - base[j]
			}
			sameBits(t, "Sub", got, want)
		}
	}
}

func TestDeltaSumValues(t *testing.T) {
	tests := []struct {
		name string
		base []float32
		x    [][]float32
		w    []float32
		lam  float32
		want []float32
	}{
		{"one model", []float32{1, 2}, [][]float32{{2, 4}}, []float32{1}, 1, []float32{2, 4}},
		{"two weighted", []float32{0, 1}, [][]float32{{1, 1}, {2, 3}}, []float32{1, 0.5}, 2, []float32{4, 3}},
		{"lam zero", []float32{5}, [][]float32{{7}}, []float32{1}, 0, []float32{5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := make([]float32, len(tc.want))
			DeltaSum(out, tc.base, tc.x, tc.w, tc.lam)
			sameBits(t, tc.name, out, tc.want)
		})
	}
}

func TestFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, n := range []int{1, 7, 8, 31, 32, 33, 100} {
		for _, pos := range []int{0, n / 2, n - 1} {
			for _, bad := range []float32{nan, inf, -inf} {
				x := make([]float32, n)
				for j := range x {
					x[j] = float32(j) - 3.5
				}
				if !Finite(x) {
					t.Fatalf("n=%d: finite slice reported non-finite", n)
				}
				x[pos] = bad
				if Finite(x) {
					t.Fatalf("n=%d: %v at %d not detected", n, bad, pos)
				}
			}
		}
	}
	if !Finite(nil) {
		t.Fatal("empty slice must be finite")
	}
	big := []float32{math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32}
	if !Finite(big) {
		t.Fatal("extreme finite values reported non-finite")
	}
}

func TestPanicsOnShortInput(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for an input shorter than the output")
		}
	}()
	DeltaSum(make([]float32, 4), make([]float32, 4), [][]float32{make([]float32, 3)}, []float32{1}, 1)
}

func BenchmarkDeltaSum(b *testing.B) {
	const n = 1 << 14
	r := rand.New(rand.NewPCG(1, 2))
	base, x, w := randSlices(r, 4, n)
	out := make([]float32, n)
	b.SetBytes(6 * 4 * n)
	b.Run("vec", func(b *testing.B) {
		for b.Loop() {
			DeltaSum(out, base, x, w, 1)
		}
	})
	b.Run("scalar", func(b *testing.B) {
		for b.Loop() {
			deltaSumGo(out, base, x, w, 1)
		}
	})
}

func TestBF16MatchesScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	special := []float32{0, float32(math.Copysign(0, -1)), 1, -1, math.MaxFloat32, -math.MaxFloat32,
		math.SmallestNonzeroFloat32, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(0x7f800001), math.Float32frombits(0xffc12345), math.Float32frombits(0x3f808000),
		math.Float32frombits(0x3f818000), math.Float32frombits(0x7f7fffff)}
	for _, n := range []int{0, 1, 7, 8, 9, 100, 4099} {
		src := make([]float32, n)
		for j := range src {
			if j < len(special) && n > 50 {
				src[j] = special[j]
			} else {
				src[j] = math.Float32frombits(r.Uint32())
			}
		}
		got, want := make([]uint16, n), make([]uint16, n)
		NarrowBF16(got, src)
		narrowBF16Go(want, src)
		for j := range want {
			if got[j] != want[j] {
				t.Fatalf("n=%d: NarrowBF16 of %#08x gives %#04x, want %#04x", n, math.Float32bits(src[j]), got[j], want[j])
			}
		}
		wf, rf := make([]float32, n), make([]float32, n)
		WidenBF16(wf, got)
		widenBF16Go(rf, want)
		sameBits(t, "WidenBF16", wf, rf)
	}
}

func TestBF16Rounding(t *testing.T) {
	tests := []struct {
		in   uint32
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1 exactly
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81}, // above the tie
		{0x7f7fffff, 0x7f80}, // max float32 rounds to +Inf
		{0x7fc00001, 0x7fc0}, // quiet NaN
		{0x7f800001, 0x7fc0}, // signalling NaN becomes quiet
		{0xff800000, 0xff80}, // -Inf
	}
	for _, tc := range tests {
		src := make([]float32, 9)
		for j := range src {
			src[j] = math.Float32frombits(tc.in)
		}
		dst := make([]uint16, 9)
		NarrowBF16(dst, src)
		for j, d := range dst {
			if d != tc.want {
				t.Errorf("%#08x at %d: got %#04x, want %#04x", tc.in, j, d, tc.want)
			}
		}
	}
}

// BelowAbs against its definition (every |x| < limit, NaN never) and its
// scalar twin: lengths around the 32-entry blocks, the offending entry in
// the blocks and in the tail, magnitudes at the limit and one ulp below,
// NaN, ±Inf, −0, limits finite and +Inf.
func TestBelowAbs(t *testing.T) {
	def := func(x []float32, limit float32) bool {
		for _, v := range x {
			a := float32(math.Abs(float64(v)))
			if !(a < limit) {
				return false
			}
		}
		return true
	}
	r := rand.New(rand.NewPCG(3, 4))
	limits := []float32{1, 65504, math.Float32frombits(0x7f7f8000), float32(math.Inf(1))}
	for _, limit := range limits {
		below := math.Nextafter32(limit, 0)
		specials := []float32{limit, -limit, below, -below, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1))}
		for n := 0; n <= 80; n++ {
			x := make([]float32, n)
			for j := range x {
				x[j] = (r.Float32()*2 - 1) * min(limit, 1e30) * 0.5
			}
			cases := [][]float32{x}
			for _, s := range specials {
				for _, at := range []int{0, n / 2, n - 1} {
					if n == 0 {
						continue
					}
					y := slices.Clone(x)
					y[at] = s
					cases = append(cases, y)
				}
			}
			for _, c := range cases {
				want := def(c, limit)
				if got := BelowAbs(c, limit); got != want {
					t.Fatalf("limit %v, n %d, %v: BelowAbs = %v, want %v", limit, n, c, got, want)
				}
				if got := maxAbsBitsGo(c) < math.Float32bits(limit); got != want {
					t.Fatalf("limit %v, n %d: maxAbsBitsGo < limit is %v, want %v", limit, n, got, want)
				}
			}
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("BelowAbs with limit 0 did not panic")
		}
	}()
	BelowAbs(nil, 0)
}
