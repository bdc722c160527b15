//go:build goexperiment.simd && amd64

package vec

import (
	"math"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/internal/avxstate"
)

// maxExpSlowdown is how much slower math.Exp may run right after a vector
// loop than right after a VZEROUPPER: about 1 when the loop clears the
// upper halves, 10–300 on the Intel Xeons measured when it does not.
const maxExpSlowdown = 3

// expSlowdownReps is the number of paired runs of avxstate.ExpSlowdown.
const expSlowdownReps = 9

// requirePenalty skips t unless the CPU runs the vector loops and punishes
// dirty upper halves (Intel; AMD does not, and then nothing can be seen).
func requirePenalty(t *testing.T) {
	t.Helper()
	if !avxstate.Available() || !accelerated {
		t.Skip("no AVX2: the vector loops do not run")
	}
	p := avxstate.Penalty(expSlowdownReps)
	if p < maxExpSlowdown {
		t.Skipf("this CPU runs math.Exp only %.1f× slower with dirty upper halves: nothing to see", p)
	}
	t.Logf("math.Exp runs %.0f× slower with dirty upper halves on this CPU", p)
}

// TestVectorLoopsLeaveUpperClean calls every vector loop of the package
// (lengths with and without a scalar tail) and fails if math.Exp right
// after it runs more than maxExpSlowdown times slower than right after a
// VZEROUPPER: the loop left the upper halves of the registers dirty.
func TestVectorLoopsLeaveUpperClean(t *testing.T) {
	requirePenalty(t)
	for _, n := range []int{1024, 1003} {
		a, b, c := make([]float32, n), make([]float32, n), make([]float32, n)
		for j := range a {
			a[j] = float32(j%17) - 8
			b[j] = float32(j%5) * 0.25
			c[j] = -float32(j % 3)
		}
		nan := append([]float32(nil), a...)
		nan[3] = float32(math.NaN())
		out := make([]float32, n)
		bits := make([]uint32, n)
		half := make([]uint16, n)
		x := [][]float32{a, b, c}
		w := []float32{0.5, 0.25, 0.25}
		tie := math.Float32bits(8) // |a| = 8 in several lanes: KeepTop's tie branch
		cases := []struct {
			name string
			run  func()
		}{
			{"DeltaSum/1", func() { DeltaSum(out, a, x[:1], w[:1], 1) }},
			{"DeltaSum/3", func() { DeltaSum(out, a, x, w, 1) }},
			{"DeltaSum/5", func() { DeltaSum(out, a, [][]float32{a, b, c, a, b}, []float32{1, 1, 1, 1, 1}, 1) }},
			{"WeightedSum", func() { WeightedSum(out, x, w, 1) }},
			{"WeightedSum/scaled", func() { WeightedSum(out, x, w, 0.5) }},
			{"Finite", func() { Finite(a) }},
			{"Finite/NaN", func() { Finite(nan) }},
			{"BelowAbs", func() { BelowAbs(a, 65504) }},
			{"Sub", func() { Sub(out, a, b) }},
			{"Scale", func() { Scale(out, a, 0.5) }},
			{"WidenBF16", func() { WidenBF16(out, half) }},
			{"NarrowBF16", func() { NarrowBF16(half, a) }},
			{"AbsDiff", func() { AbsDiff(out, a, b) }},
			{"AbsBits", func() { AbsBits(bits, a) }},
			{"CountWindow", func() { CountWindow(a, math.Float32bits(2), math.Float32bits(5), nil) }},
			{"KeepTop", func() { copy(out, a); KeepTop(out, tie, 0) }},
			{"KeepTop/ties", func() { copy(out, a); KeepTop(out, tie, 3) }},
			{"DisjointMean", func() { DisjointMean(out, x, w, false) }},
			{"DisjointMean/norm", func() { DisjointMean(out, x, w, true) }},
			{"DareDrop", func() { copy(out, a); DareDrop(out, 7, 0, DareThreshold(0.5), 2) }},
			{"MergeTasks/ties", func() {
				MergeTasks(out, a, x, &TaskMerge{W: w, Lam: 1, Disjoint: true, Norm: true,
					Bands: []Band{{In: Cut{tie, 3}, Out: Nothing}, {In: Everything, Out: Cut{tie, 2}}, {In: Cut{tie, -1}, Out: Nothing}}})
			}},
			{"MergeTasks/consensus", func() {
				MergeTasks(out, a, x, &TaskMerge{W: w, Lam: 1, DivOn: true, Div: 2, Scale: w, TallLam: w, K: 2, Check: true})
			}},
			{"CountDiffWindows", func() {
				CountDiffWindows(a, b, []uint32{0, math.Float32bits(2)}, []uint32{math.Float32bits(1), math.Float32bits(5)}, make([]int64, 2), make([][]uint32, 2))
			}},
			{"MergeTasks/dare", func() {
				MergeTasks(out, a, x, &TaskMerge{W: w, Lam: 1, Disjoint: true, Scale: w, Start: 5,
					Drop: []Drop{{Key: 1, Thr: DareThreshold(0.5)}, {Key: 2, Thr: 1 << 24}, {Key: 3, Thr: DareThreshold(0.1)}}})
			}},
			{"MergeTasksBF16/dare", func() {
				MergeTasksBF16(out, half, [][]uint16{half, half, half}, &TaskMerge{W: w, Lam: 1, Disjoint: true, Start: 5,
					Drop: []Drop{{Key: 1, Thr: DareThreshold(0.5)}, {Key: 2, Thr: 1 << 24}, {Key: 3, Thr: DareThreshold(0.1)}}})
			}},
			{"DareSums", func() { DareSums(a, b, nil, nil, 7, 0, DareThreshold(0.5)) }},
			{"DareSums/bf16", func() { DareSums(nil, nil, half, half, 7, 0, DareThreshold(0.5)) }},
			{"SumF64", func() { SumF64(a) }},
			{"MeanLerp", func() { MeanLerp(out, a, x, 0.3, 0.7) }},
			{"TaskGrams", func() { TaskGrams(make([]float64, 6), a, x) }},
		}
		for _, c := range cases {
			if s := avxstate.ExpSlowdown(c.run, expSlowdownReps); s > maxExpSlowdown {
				t.Errorf("n=%d %s: math.Exp %.1f× slower right after it (limit %d): upper halves left dirty", n, c.name, s, maxExpSlowdown)
			}
		}
	}
}

// TestClearAVXUpper checks that ClearAVXUpper cleans what Dirty leaves.
func TestClearAVXUpper(t *testing.T) {
	requirePenalty(t)
	clean := func() { avxstate.Dirty(); ClearAVXUpper() }
	if s := avxstate.ExpSlowdown(clean, expSlowdownReps); s > maxExpSlowdown {
		t.Errorf("math.Exp %.1f× slower after ClearAVXUpper (limit %d)", s, maxExpSlowdown)
	}
}
