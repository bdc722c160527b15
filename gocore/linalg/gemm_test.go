package linalg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// gemmRef is the definition of gemm written as plainly as possible.
func gemmRef(m, n, k int, a, b operand, beta float32, c operand) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			s := scaleBeta(beta, c.at(i, j))
			for p := 0; p < k; p++ {
				if x := a.at(i, p); x != 0 {
					s = s + float32(x*b.at(p, j))
				}
			}
			c.set(i, j, s)
		}
	}
}

// testKernels returns the portable kernels: the archsimd kernels of this
// build and CPU plus plain-Go kernels of several tile shapes (the fused
// assembly kernels are tested in gemm_fma_test.go).
func testKernels() []microKernel {
	ks := vectorKernels()
	ks = append(ks, portableKernel(), scalarKernel(4, 32), scalarKernel(1, 1), scalarKernel(3, 7), scalarKernel(2, 80))
	return ks
}

// randOperand returns storage for an r×c operand (transposed when trans)
// with standard normal entries, a fraction zeroFrac of them zero.
func randOperand(rng *rand.Rand, r, c int, trans bool, zeroFrac float64) operand {
	d := make([]float32, r*c)
	for i := range d {
		if rng.Float64() >= zeroFrac {
			d[i] = float32(rng.NormFloat64())
		}
	}
	if trans {
		return operand{data: d, ld: max(r, 1), trans: true}
	}
	return operand{data: d, ld: max(c, 1)}
}

// Every portable kernel (AVX-512, AVX2 and plain Go of various tile shapes) gives the
// bits of the plain definition, for odd shapes, every transpose, β ∈ {0, 1,
// 0.5}, sparse A (zero skipping), k beyond one k block, and 1, 2 or 5
// threads.
func TestGemmBitsMatchDefinition(t *testing.T) {
	shapes := []struct{ m, n, k int }{
		{1, 1, 1}, {7, 9, 13}, {65, 130, 74}, {2, 81, 3}, {33, 74, 600},
		{100, 17, 1100}, {3, 200, 64}, {1, 160, 1}, {41, 1, 37}, {5, 4, 0}, {0, 3, 2}, {4, 0, 2},
	}
	for si, sh := range shapes {
		for _, layout := range []int{0, 1, 2, 3, 4, 5, 6, 7} {
			aT, bT, cT := layout&1 != 0, layout&2 != 0, layout&4 != 0
			for _, beta := range []float32{0, 1, 0.5} {
				name := fmt.Sprintf("%dx%dx%d/aT=%v,bT=%v,cT=%v/beta=%v", sh.m, sh.n, sh.k, aT, bT, cT, beta)
				rng := rand.New(rand.NewPCG(uint64(si), uint64(layout)))
				zf := []float64{0, 0.3}[layout%2]
				a := randOperand(rng, sh.m, sh.k, aT, zf)
				b := randOperand(rng, sh.k, sh.n, bT, 0.1)
				c0 := randOperand(rng, sh.m, sh.n, cT, 0)
				if beta == 0 && len(c0.data) > 0 {
					c0.data[0] = float32(math.NaN()) // ignored when β = 0
				}
				want := c0
				want.data = slices.Clone(c0.data)
				gemmRef(sh.m, sh.n, sh.k, a, b, beta, want)
				for _, kern := range testKernels() {
					for _, threads := range []int{1, 2, 5} {
						got := c0
						got.data = slices.Clone(c0.data)
						gemmWith(parallel.Pool{Threads: threads}, kern, sh.m, sh.n, sh.k, a, b, beta, got)
						for i := range got.data {
							if math.Float32bits(got.data[i]) != math.Float32bits(want.data[i]) {
								t.Fatalf("%s: kernel %s %d×%d, %d threads: element %d = %v, want %v",
									name, kern.name, kern.mr, kern.nr, threads, i, got.data[i], want.data[i])
							}
						}
					}
				}
			}
		}
	}
}

// For (NoTrans, NoTrans) gemm with the portable kernels is bit-identical to
// gonum's blas32 Sgemm with α = 1 (same operation order, zero skipping
// included).
func TestGemmMatchesGonumSgemm(t *testing.T) {
	for _, sh := range []struct{ m, n, k int }{{7, 9, 13}, {130, 65, 74}, {70, 300, 64}, {40, 90, 700}} {
		for _, beta := range []float32{0, 1, -0.75} {
			rng := rand.New(rand.NewPCG(uint64(sh.m), uint64(sh.k)))
			a := randOperand(rng, sh.m, sh.k, false, 0.2)
			b := randOperand(rng, sh.k, sh.n, false, 0)
			c := randOperand(rng, sh.m, sh.n, false, 0)
			want := slices.Clone(c.data)
			blas32.Implementation().Sgemm(blas.NoTrans, blas.NoTrans, sh.m, sh.n, sh.k, 1, a.data, a.ld, b.data, b.ld, beta, want, sh.n)
			gemmWith(parallel.Pool{}, portableKernel(), sh.m, sh.n, sh.k, a, b, beta, c)
			for i := range want {
				if math.Float32bits(c.data[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%v beta %v: element %d = %v, Sgemm gives %v", sh, beta, i, c.data[i], want[i])
				}
			}
		}
	}
}
