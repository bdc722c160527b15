package merge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// TestDareSumsMatchSeparateLoops compares vec.DareSums (the vector pass
// where the build and CPU have one) with the loops it replaces: widen,
// Sub, dellaAbsSum, DareDrop, dellaAbsSum, bit for bit, for float32 and
// bfloat16 inputs, lengths around the vector width, densities below and at
// 1, and non-finite inputs (ok = false).
func TestDareSumsMatchSeparateLoops(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, n := range []int{0, 1, 7, 8, 9, 63, 64, 1000, 16387} {
			for _, d := range []float32{0.1, 0.5, 0.9, 1} {
				for _, bad := range []string{"", "nan", "inf", "overflow"} {
					where := fmt.Sprintf("%v n=%d d=%v %s", dt, n, d, bad)
					x, b := make([]float32, n), make([]float32, n)
					for j := range x {
						b[j] = float32(r.NormFloat64())
						x[j] = b[j] + float32(0.01*r.NormFloat64())
						if j%5 == 0 {
							x[j] = b[j] // τ = 0
						}
					}
					if n > 0 {
						switch bad {
						case "nan":
							x[n/2] = float32(math.NaN())
						case "inf":
							b[n-1] = float32(math.Inf(-1))
						case "overflow":
							x[n-1], b[n-1] = math.MaxFloat32, -math.MaxFloat32
						}
					}
					var x16, b16 []uint16
					if dt == tensor.BF16 {
						x16, b16 = make([]uint16, n), make([]uint16, n)
						for j := range x {
							x16[j], b16[j] = tensor.BF16Bits(x[j]), tensor.BF16Bits(b[j])
							x[j], b[j] = math.Float32frombits(uint32(x16[j])<<16), math.Float32frombits(uint32(b16[j])<<16)
						}
					}
					key, start := uint64(0x1234567), uint64(r.IntN(1<<20))
					thr := uint64(1) << 24
					if d < 1 {
						thr = vec.DareThreshold(d)
					}
					tau := make([]float32, n)
					vec.Sub(tau, x, b)
					finite := true
					for _, v := range tau {
						finite = finite && !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0)
					}
					wantB := dellaAbsSum(tau)
					vec.DareDrop(tau, key, start, thr, 1)
					wantA := dellaAbsSum(tau)
					var x32, b32 []float32
					if dt == tensor.F32 {
						x32, b32 = x, b
					}
					gb, ga, ok := vec.DareSums(x32, b32, x16, b16, key, start, thr)
					if ok != finite {
						t.Fatalf("%s: ok = %v, want %v", where, ok, finite)
					}
					if ok && (math.Float64bits(gb) != math.Float64bits(wantB) || math.Float64bits(ga) != math.Float64bits(wantA)) {
						t.Fatalf("%s: (%v, %v), separate loops (%v, %v)", where, gb, ga, wantB, wantA)
					}
				}
			}
		}
	}
}

// TestDareRescaleGeneralPath: DARE with rescale (dare_linear, dare_ties)
// gives the same bits through dareChunkSums as through the separate loops
// (generalOnly), float32 and bfloat16, and the same error for a NaN input.
func TestDareRescaleGeneralPath(t *testing.T) {
	shapes := [][]int{{33, 70}, {5000}, {3}}
	for _, method := range []string{"dare_linear", "dare_ties"} {
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			for _, coarse := range []bool{false, true} {
				p := testParams(method)
				p.Density, p.Rescale, p.Seed = 0.3, true, 7
				where := fmt.Sprintf("%s %v coarse=%v", method, dt, coarse)
				checkGeneralPath(t, where, method, p, dt, shapes, 3, coarse, false, false)
			}
		}
	}
}
