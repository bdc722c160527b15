package vec

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

// The loops' definitions, one element at a time, written from the doc
// comments and independent of both the vector loops and their scalar
// twins (the xxxGo functions). TestLoopsMatchScalar and its kin compare
// the exported loop with its scalar twin, which is the same function in a
// build without the vector loops; the tests here compare both with these
// definitions, so they can fail in every build.

func defDeltaSum(j int, base []float32, x [][]float32, w []float32, lam float32) float32 {
	var acc float32
	for m := range x {
		d := x[m][j] - base[j]
		p := float32(w[m] * d)
		if m == 0 {
			acc = p
		} else {
			acc = float32(acc + p)
		}
	}
	return base[j] + float32(lam*acc)
}

func defWeightedSum(j int, x [][]float32, w []float32, scale float32) float32 {
	var acc float32
	for m := range x {
		p := float32(w[m] * x[m][j])
		if m == 0 {
			acc = p
		} else {
			acc = float32(acc + p)
		}
	}
	if scale != 1 {
		acc = float32(acc * scale)
	}
	return acc
}

func defDisjointMean(j int, x [][]float32, w []float32, norm bool) float32 {
	sum := defWeightedSum(j, x, w, 1)
	positive := sum > 0 || sum == 0 // γ = + for a ±0 sum; NaN sums do not occur here
	var num, den float32
	for m := range x {
		v := float32(w[m] * x[m][j])
		if v != 0 && (v > 0) == positive {
			num = float32(num + v)
			den = float32(den + w[m])
		}
	}
	if norm && den != 0 {
		return num / den
	}
	return num
}

func defMagnitudeBits(v float32) uint32 { return math.Float32bits(float32(math.Abs(float64(v)))) }

func defNarrowBF16(x float32) uint16 {
	if math.IsNaN(float64(x)) {
		return uint16(math.Float32bits(x)>>16) | 0x40 // quiet, sign and top payload kept
	}
	// Round to nearest, ties to even, by comparing with the two neighbours.
	b := math.Float32bits(x)
	lo := b &^ 0xffff
	rest := b & 0xffff
	switch {
	case rest > 0x8000, rest == 0x8000 && (lo>>16)&1 == 1:
		return uint16(lo>>16) + 1
	default:
		return uint16(lo >> 16)
	}
}

func TestScalarTwinsMatchDefinitions(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{0, 1, 9, 33, 1000} {
		for _, T := range []int{1, 2, 3, 5} {
			base, x, w := randSlices(r, T, n)
			c := make([][]float32, T)
			for m := range c {
				c[m] = coarse(r, n)
			}
			for _, lam := range []float32{1, 0.3} {
				for name, run := range map[string]func(out []float32){
					"DeltaSum":   func(out []float32) { DeltaSum(out, base, x, w, lam) },
					"deltaSumGo": func(out []float32) { deltaSumGo(out, base, x, w, lam) },
				} {
					out := make([]float32, n)
					run(out)
					for j := range out {
						if want := defDeltaSum(j, base, x, w, lam); math.Float32bits(out[j]) != math.Float32bits(want) {
							t.Fatalf("%s n=%d T=%d entry %d = %v, definition %v", name, n, T, j, out[j], want)
						}
					}
				}
				for name, run := range map[string]func(out []float32){
					"WeightedSum":   func(out []float32) { WeightedSum(out, x, w, lam) },
					"weightedSumGo": func(out []float32) { weightedSumGo(out, x, w, lam) },
				} {
					out := make([]float32, n)
					run(out)
					for j := range out {
						if want := defWeightedSum(j, x, w, lam); math.Float32bits(out[j]) != math.Float32bits(want) {
							t.Fatalf("%s n=%d T=%d entry %d = %v, definition %v", name, n, T, j, out[j], want)
						}
					}
				}
			}
			cw := []float32{1, 0.5, -1, 2, 0}[:T]
			for _, norm := range []bool{false, true} {
				for name, run := range map[string]func(out []float32){
					"DisjointMean":   func(out []float32) { DisjointMean(out, c, cw, norm) },
					"disjointMeanGo": func(out []float32) { disjointMeanGo(out, c, cw, norm) },
				} {
					out := make([]float32, n)
					run(out)
					for j := range out {
						if want := defDisjointMean(j, c, cw, norm); math.Float32bits(out[j]) != math.Float32bits(want) {
							t.Fatalf("%s n=%d T=%d norm=%v entry %d = %v, definition %v", name, n, T, norm, j, out[j], want)
						}
					}
				}
			}
		}
	}
}

func TestSelectionTwinsMatchDefinitions(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{0, 1, 9, 250} {
		a, b := coarse(r, n), coarse(r, n)
		for name, run := range map[string]func([]float32){
			"AbsDiff": func(o []float32) { AbsDiff(o, a, b) }, "absDiffGo": func(o []float32) { absDiffGo(o, a, b) },
		} {
			out := make([]float32, n)
			run(out)
			for j := range out {
				if want := float32(math.Abs(float64(a[j] - b[j]))); math.Float32bits(out[j]) != math.Float32bits(want) {
					t.Fatalf("%s entry %d = %v, want |%v − %v|", name, j, out[j], a[j], b[j])
				}
			}
		}
		for name, run := range map[string]func([]uint32){
			"AbsBits": func(o []uint32) { AbsBits(o, a) }, "absBitsGo": func(o []uint32) { absBitsGo(o, a) },
		} {
			out := make([]uint32, n)
			run(out)
			for j := range out {
				if out[j] != defMagnitudeBits(a[j]) {
					t.Fatalf("%s entry %d = %#x, want %#x", name, j, out[j], defMagnitudeBits(a[j]))
				}
			}
		}
		mags := make([]float32, n)
		for j := range mags {
			mags[j] = float32(math.Abs(float64(a[j])))
		}
		lo, hi := uint32(0x3f000000), uint32(0x3fc00000)
		var wantAbove int64
		var wantCands []uint32
		for _, v := range mags {
			bits := math.Float32bits(v)
			if bits > hi {
				wantAbove++
			} else if bits >= lo {
				wantCands = append(wantCands, bits)
			}
		}
		for name, f := range map[string]func([]float32, uint32, uint32, []uint32) (int64, []uint32){
			"CountWindow": CountWindow, "countWindowGo": countWindowGo,
		} {
			above, cands := f(mags, lo, hi, nil)
			if above != wantAbove || !slices.Equal(cands, wantCands) {
				t.Fatalf("%s n=%d: %d above, %v; want %d, %v", name, n, above, cands, wantAbove, wantCands)
			}
		}
		for _, allow := range []int{-1, 0, 2} {
			cut := uint32(0x3f800000) // |x| = 1
			want := slices.Clone(a)
			left := allow
			for j, v := range want {
				m := defMagnitudeBits(v)
				switch {
				case m > cut:
				case m == cut && left != 0:
					if left > 0 {
						left--
					}
				default:
					want[j] = 0
				}
			}
			for name, f := range map[string]func([]float32, uint32, int) int{"KeepTop": KeepTop, "keepTopGo": keepTopGo} {
				got := slices.Clone(a)
				if rest := f(got, cut, allow); rest != left {
					t.Fatalf("%s allow=%d: %d left, want %d", name, allow, rest, left)
				}
				sameBits(t, name, got, want)
			}
		}
	}
}

func TestConversionTwinsMatchDefinitions(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	src := make([]float32, 4099)
	for j := range src {
		src[j] = math.Float32frombits(r.Uint32())
	}
	src[0], src[1], src[2] = float32(math.Inf(1)), math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000)
	for name, f := range map[string]func([]uint16, []float32){"NarrowBF16": NarrowBF16, "narrowBF16Go": narrowBF16Go} {
		got := make([]uint16, len(src))
		f(got, src)
		for j, x := range src {
			if want := defNarrowBF16(x); got[j] != want {
				t.Fatalf("%s of %#08x = %#04x, want %#04x", name, math.Float32bits(x), got[j], want)
			}
		}
	}
	h := make([]uint16, 1000)
	for j := range h {
		h[j] = uint16(r.Uint32())
	}
	for name, f := range map[string]func([]float32, []uint16){"WidenBF16": WidenBF16, "widenBF16Go": widenBF16Go} {
		got := make([]float32, len(h))
		f(got, h)
		for j, b := range h {
			if math.Float32bits(got[j]) != uint32(b)<<16 {
				t.Fatalf("%s of %#04x = %#08x", name, b, math.Float32bits(got[j]))
			}
		}
	}
}

func TestDareTwinsMatchDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	key := rng.Key(5, "layer.weight", 2)
	for _, d := range []float32{0.1, 0.5, 0.9, 1} {
		x := make([]float32, 517)
		for j := range x {
			x[j] = float32(r.NormFloat64())
		}
		scale := 1 / d
		for name, f := range map[string]func([]float32, uint64, uint64, uint64, float32){"DareDrop": DareDrop, "dareDropGo": dareDropGo} {
			got := slices.Clone(x)
			f(got, key, 100, DareThreshold(d), scale)
			for j, v := range x {
				want := float32(0)
				if rng.Uniform(key, 100+uint64(j)) < d {
					want = v * scale
				}
				if math.Float32bits(got[j]) != math.Float32bits(want) {
					t.Fatalf("%s d=%v entry %d = %v, want %v", name, d, j, got[j], want)
				}
			}
		}
	}
}
