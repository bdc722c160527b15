package neuro

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// at returns n entries of backing starting off entries past a 16-byte
// boundary (Go allocations of this size are 16-byte aligned; checked).
func at(t *testing.T, backing []float32, off, n int) []float32 {
	if headLen(backing) != 0 {
		t.Fatal("backing array not 16-byte aligned")
	}
	return backing[off : off+n]
}

// wide fills x with entries over several binades, so that float64 sums
// round and their order shows in the bits.
func wide(r *rand.Rand, x []float32) {
	for i := range x {
		x[i] = float32(r.NormFloat64() * math.Exp2(float64(r.IntN(40)-20)))
	}
}

// TestDsdotMatchesGonum: dsdot spells out gonum's Dsdot bit for bit, for
// every alignment of y and lengths around the head, block and tail sizes.
func TestDsdotMatchesGonum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 9))
	bx, by := make([]float32, 1100), make([]float32, 1100)
	for _, n := range []int{0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 15, 16, 17, 23, 31, 64, 1000, 1027} {
		for ox := range 4 {
			for oy := range 4 {
				wide(r, bx)
				wide(r, by)
				x, y := at(t, bx, ox, n), at(t, by, oy, n)
				want := gonum.Implementation{}.Dsdot(n, x, 1, y, 1)
				if got := dsdot(x, y); math.Float64bits(got) != math.Float64bits(want) {
					t.Fatalf("n %d offsets %d %d: dsdot %v, Dsdot %v", n, ox, oy, got, want)
				}
			}
		}
	}
}

// TestGramsMatchesDsdot: the one-pass Gram against Dsdot pair by pair,
// with w's alignment equal to the task rows' or not; task rows of unequal
// alignment are refused. In the SIMD build on AVX2 the pass must run.
func TestGramsMatchesDsdot(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 9))
	for _, R := range []int{2, 3, 4, 5, 6, 8} {
		for _, n := range []int{8, 11, 15, 16, 17, 64, 333, 2048} {
			for ow := range 4 {
				for ot := range 4 {
					rows := make([][]float32, R)
					for i := range rows {
						b := make([]float32, n+8)
						wide(r, b)
						off := ot
						if i == 0 {
							off = ow
						}
						rows[i] = at(t, b, off, n)
					}
					g := make([]float64, R*R)
					ok := grams(g, rows)
					h := headLen(rows[1])
					if vec.Accelerated() && ok != (n >= h+8) {
						t.Fatalf("R %d n %d offsets %d %d: grams ran %v", R, n, ow, ot, ok)
					}
					if !ok {
						continue
					}
					for i := range R {
						for j := i; j < R; j++ {
							want := gonum.Implementation{}.Dsdot(n, rows[i], 1, rows[j], 1)
							if got := g[i*R+j]; math.Float64bits(got) != math.Float64bits(want) {
								t.Fatalf("R %d n %d offsets %d %d pair (%d, %d): %v, Dsdot %v", R, n, ow, ot, i, j, got, want)
							}
						}
					}
				}
			}
		}
	}
	// Task rows of two alignments: no one-pass Gram.
	b := make([]float32, 64)
	if grams(make([]float64, 9), [][]float32{b[:32], b[:32], b[1:33]}) {
		t.Fatal("grams accepted task rows of different alignments")
	}
}

// oldCombine is Row's former output: cw·w, gonum's Saxpy per nonzero
// coefficient, then w + that.
func oldCombine(out, w []float32, taus [][]float32, b []float32, cw float32) {
	for j, x := range w {
		out[j] = cw * x
	}
	for i, tau := range taus {
		blas32.Implementation().Saxpy(len(out), b[i], tau[:len(out)], 1, out, 1)
	}
	for j, x := range w {
		out[j] = x + out[j]
	}
}

// TestCombineRow: the vector loop against its scalar twin and both against
// the former three passes, bit for bit (zeros of both signs included), at
// lengths around the vector width and every alignment of the output.
func TestCombineRow(t *testing.T) {
	// The 16-lane loop where the CPU has AVX-512, and the 8-lane one.
	defer func(v bool) { row512 = v }(row512)
	for _, wide := range []bool{row512, false} {
		row512 = wide
		testCombineRow(t)
	}
}

func testCombineRow(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 9))
	for _, T := range []int{0, 1, 3, 5} {
		for _, n := range []int{1, 7, 8, 9, 16, 23, 2048} {
			for off := range 4 {
				w := make([]float32, n)
				wide(r, w)
				w[0] = float32(math.Copysign(0, -1))
				taus := make([][]float32, T)
				b := make([]float32, T)
				for i := range taus {
					taus[i] = make([]float32, n)
					wide(r, taus[i])
					b[i] = float32(r.NormFloat64())
				}
				cw := float32(r.NormFloat64())
				ob := make([]float32, n+8)
				out := at(t, ob, off, n)
				twin, want := make([]float32, n), make([]float32, n)
				combineRow(out, w, taus, b, cw)
				combineRowGo(twin, w, taus, b, cw)
				oldCombine(want, w, taus, b, cw)
				for j := range out {
					if math.Float32bits(out[j]) != math.Float32bits(twin[j]) || math.Float32bits(out[j]) != math.Float32bits(want[j]) {
						t.Fatalf("T %d n %d offset %d entry %d: %v, twin %v, former %v", T, n, off, j, out[j], twin[j], want[j])
					}
				}
			}
		}
	}
}

// BenchmarkGrams times the one-pass Gram of w and four task rows of 2048
// entries (NeuroMerging of four models, a row in the L1 cache).
func BenchmarkGrams(b *testing.B) {
	r := rand.New(rand.NewPCG(4, 4))
	rows := make([][]float32, 5)
	for i := range rows {
		rows[i] = make([]float32, 2048)
		wide(r, rows[i])
	}
	g := make([]float64, 25)
	b.SetBytes(5 * 4 * 2048)
	for b.Loop() {
		grams(g, rows)
	}
}
