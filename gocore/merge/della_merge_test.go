package merge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestDellaMergeMatchesGeneralPath compares DELLA's one-pass merge
// (della_merge.go) with mergeChunk's general path (generalOnly), bit for
// bit and error for error, over dtypes, transposed and conv shapes, row
// lengths that are not multiples of 8 or 64, parameters that change the
// kernel (Normalize, negative and zero weights, density 1 for one model,
// rescale off, global scope, 1 and 8 models), inputs with ties and ±0, and
// an overflowing λ.
func TestDellaMergeMatchesGeneralPath(t *testing.T) {
	type variant struct {
		name string
		T    int
		set  func(p *Params)
	}
	variants := []variant{
		{"default", 3, func(*Params) {}},
		{"normalize", 3, func(p *Params) { p.Normalize = true }},
		{"weights", 3, func(p *Params) { p.Weights = []float32{1, -0.5, 0} }},
		{"weights+normalize", 3, func(p *Params) { p.Weights, p.Normalize = []float32{0.25, 2, 0.5}, true }},
		{"rescale off", 3, func(p *Params) { p.Rescale = false }},
		{"density1 for one", 3, func(p *Params) { p.Densities = []float64{0.3, 1, 0.4} }},
		{"global", 3, func(p *Params) { p.Scope = ScopeGlobal }},
		{"one model", 1, func(*Params) {}},
		{"eight models", 8, func(p *Params) { p.Normalize = true }},
		{"overflow", 3, func(p *Params) { p.Lambda = 3e38 }},
	}
	shapes := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}, {9, 4, 3, 3}, {37, 129}, {64, 256}}
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, method := range []string{"della", "della_linear"} {
			for _, v := range variants {
				for _, data := range []string{"normal", "coarse"} {
					for _, transposed := range []bool{false, true} {
						p := testParams(method)
						p.Lambda, p.Density, p.Epsilon, p.Seed = 0.7, 0.3, 0.1, 9
						p.Pool = parallel.Pool{Threads: 2}
						v.set(&p)
						where := fmt.Sprintf("%v %s %s %s transposed=%v", dt, method, v.name, data, transposed)
						if !sampleCase(where) {
							continue
						}
						if bad := checkValues(methodSpecs[method], &p, v.T); len(bad) > 0 {
							t.Fatalf("%s: %v", where, bad)
						}
						checkGeneralPath(t, where, method, p, dt, shapes, v.T, data == "coarse", transposed, v.name == "overflow")
					}
				}
			}
		}
	}
}

// TestDellaMergeMatchesTwin compares dellaMerge with dellaMergeGo bit for
// bit: lengths around the vector width, 1 to 8 models, kept and dropped
// entries, models without bits, ±0, ties of sign, Inf results.
func TestDellaMergeMatchesTwin(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	val := func() float32 {
		switch r.IntN(8) {
		case 0:
			return float32(math.Copysign(0, -1))
		case 1:
			return 0
		case 2:
			return float32(r.IntN(5)-2) * 0.5
		default:
			return float32(r.NormFloat64())
		}
	}
	for _, n := range []int{1, 7, 8, 9, 63, 64, 65, 200, 1031} {
		for T := 1; T <= 8; T++ {
			for variant := range 6 {
				base := make([]float32, n)
				for j := range base {
					base[j] = val()
				}
				x := make([][]float32, T)
				op := dellaMergeOp{w: make([]float32, T), scale: make([]float32, T), words: make([][]uint64, T),
					lam: 0.7, disjoint: variant%3 != 2, norm: variant%3 == 1}
				for m := range T {
					x[m] = make([]float32, n)
					for j := range x[m] {
						x[m][j] = val()
					}
					op.w[m] = []float32{1, -0.5, 0, 2.5}[(m+variant)%4]
					op.scale[m] = 1 + float32(m)*0.375
					if (m+variant)%3 != 0 {
						op.words[m] = make([]uint64, (n+63)/64)
						for i := range op.words[m] {
							op.words[m][i] = r.Uint64()
						}
					}
				}
				if variant >= 3 {
					op.lam = 3e38 // some results overflow
				}
				got, want := make([]float32, n), make([]float32, n)
				okGot, okWant := dellaMerge(got, base, x, &op), dellaMergeGo(want, base, x, &op)
				if okGot != okWant {
					t.Fatalf("n=%d T=%d variant %d: finite %v, twin %v", n, T, variant, okGot, okWant)
				}
				for j := range got {
					if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
						t.Fatalf("n=%d T=%d variant %d: entry %d is %v, twin %v", n, T, variant, j, got[j], want[j])
					}
				}
			}
		}
	}
}

// TestDellaTouch: dellaTouch sums the bit patterns of every 16th entry
// (one per 64-byte line of a 64-byte-aligned slice).
func TestDellaTouch(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 17, 100} {
		x := make([]float32, n)
		var want uint32
		for i := range x {
			x[i] = float32(i) * 1.5
			if i%16 == 0 {
				want += math.Float32bits(x[i])
			}
		}
		if got := dellaTouch(x); got != want {
			t.Fatalf("n=%d: %d, want %d", n, got, want)
		}
	}
}
