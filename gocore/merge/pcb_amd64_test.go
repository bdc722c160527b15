//go:build goexperiment.simd && amd64

package merge

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// TestPCBKernelsMatchScalar checks the vector kernels pcbBetaKeys and
// pcbMerge against their plain-Go twins bit for bit: several model counts,
// lengths with and without a scalar tail, zero entries, constant rows
// (hi = lo) and models without scores (bmax = cut), kept-key offsets.
func TestPCBKernelsMatchScalar(t *testing.T) {
	if !vec.Accelerated() {
		t.Skip("no AVX2")
	}
	defer func(v bool) { pcbVector512 = v }(pcbVector512)
	widths := []bool{false}
	if pcbVector512 {
		widths = append(widths, true) // the 16-lane kernels too
	} else {
		t.Log("no AVX-512: the 16-lane kernels are not checked")
	}
	for _, wide := range widths {
		pcbVector512 = wide
		testPCBKernels(t)
	}
}

func testPCBKernels(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, T := range []int{1, 2, 3, 8, 11} {
		for _, n := range []int{5, 64, 1003} {
			taus := make([][]float32, T)
			for m := range taus {
				taus[m] = make([]float32, n)
				for j := range taus[m] {
					switch r.IntN(10) {
					case 0:
						taus[m][j] = 0
					case 1:
						taus[m][j] = float32(math.Copysign(0, -1))
					default:
						taus[m][j] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(5)-3)))
					}
				}
			}
			cuts := make([]pcbCut, T)
			w := make([]float32, T)
			for m := range cuts {
				cuts[m] = pcbCut{lo: 1e-5, hi: float32(0.5 + r.Float64()), cut: float32(r.Float64() - 0.5), bmax: float32(1 + 3*r.Float64())}
				w[m] = float32(r.Float64() * 2)
			}
			cuts[0].hi = cuts[0].lo // constant row
			if T > 1 {
				cuts[1].bmax = cuts[1].cut // no scores
			}
			const off = 3
			got, want := make([][]uint32, T), make([][]uint32, T)
			for m := range got {
				got[m], want[m] = make([]uint32, n+off), make([]uint32, n+off)
			}
			view := func(k [][]uint32) [][]uint32 {
				v := make([][]uint32, len(k))
				for m := range k {
					v[m] = k[m][off:]
				}
				return v
			}
			pcbBetaKeys(view(got), nil, taus, cuts, n)
			pcbBetaKeysGo(view(want), nil, taus, cuts, 0, n)
			for m := range got {
				if !slices.Equal(got[m], want[m]) {
					t.Fatalf("T=%d n=%d: pcbBetaKeys model %d differs from pcbBetaKeysGo", T, n, m)
				}
			}
			// From the models and the base: the same keys as from τ.
			base0 := make([]float32, n)
			models := make([][]float32, T)
			for j := range base0 {
				base0[j] = float32(r.NormFloat64())
			}
			for m := range models {
				models[m] = make([]float32, n)
				for j := range models[m] {
					models[m][j] = base0[j] + taus[m][j]
				}
			}
			fromTaus := make([][]uint32, T)
			vtaus := make([][]float32, T)
			for m := range models {
				fromTaus[m] = make([]uint32, n)
				vtaus[m] = make([]float32, n)
				for j := range vtaus[m] {
					vtaus[m][j] = models[m][j] - base0[j]
				}
			}
			pcbBetaKeysGo(fromTaus, nil, vtaus, cuts, 0, n)
			for _, f := range []func([][]uint32){
				func(d [][]uint32) { pcbBetaKeys(d, base0, models, cuts, n) },
				func(d [][]uint32) { pcbBetaKeysGo(d, base0, models, cuts, 0, n) },
			} {
				d := make([][]uint32, T)
				for m := range d {
					d[m] = make([]uint32, n)
				}
				f(d)
				for m := range d {
					if !slices.Equal(d[m], fromTaus[m]) {
						t.Fatalf("T=%d n=%d: β keys from models and base differ from those of τ (model %d)", T, n, m)
					}
				}
			}
			base := make([]float32, n)
			for j := range base {
				base[j] = float32(r.NormFloat64())
			}
			o1, o2 := make([]float32, n), make([]float32, n)
			pcbMerge(o1, base, taus, false, got, off, cuts, w, 0.7)
			pcbMergeGo(o2, base, taus, false, want, off, cuts, w, 0.7, 0, n)
			for j := range o1 {
				if math.Float32bits(o1[j]) != math.Float32bits(o2[j]) {
					t.Fatalf("T=%d n=%d wide=%v: pcbMerge[%d] = %g, pcbMergeGo %g", T, n, pcbVector512, j, o1[j], o2[j])
				}
			}
			// β computed in the merge kernel: the bits of the kept keys.
			for _, f := range []func(o []float32) bool{
				func(o []float32) bool { return pcbMergeScored(o, base, taus, false, cuts, w, 0.7) },
				func(o []float32) bool { pcbMergeScoredGo(o, base, taus, false, cuts, w, 0.7, 0, n); return true },
			} {
				o3 := make([]float32, n)
				if !f(o3) {
					continue // no 16-lane kernel: the caller scores into keys
				}
				for j := range o3 {
					if math.Float32bits(o3[j]) != math.Float32bits(o2[j]) {
						t.Fatalf("T=%d n=%d wide=%v: scored merge [%d] = %g, from keys %g", T, n, pcbVector512, j, o3[j], o2[j])
					}
				}
			}
			// β computed from the models and the base: the bits of the
			// merge of τ = model − base with its keys.
			oT := make([]float32, n)
			pcbMergeGo(oT, base0, vtaus, false, fromTaus, 0, cuts, w, 0.7, 0, n)
			for _, f := range []func(o []float32) bool{
				func(o []float32) bool { return pcbMergeScored(o, base0, models, true, cuts, w, 0.7) },
				func(o []float32) bool { pcbMergeScoredGo(o, base0, models, true, cuts, w, 0.7, 0, n); return true },
			} {
				o3 := make([]float32, n)
				if !f(o3) {
					continue
				}
				for j := range o3 {
					if math.Float32bits(o3[j]) != math.Float32bits(oT[j]) {
						t.Fatalf("T=%d n=%d wide=%v: scored merge from models [%d] = %g, from τ's keys %g", T, n, pcbVector512, j, o3[j], oT[j])
					}
				}
			}
			// From the models and the base (τ made in the kernel): the
			// bits of the merge of τ = model − base.
			for _, f := range []func(o []float32){
				func(o []float32) { pcbMerge(o, base0, models, true, got, off, cuts, w, 0.7) },
				func(o []float32) { pcbMergeGo(o, base0, models, true, got, off, cuts, w, 0.7, 0, n) },
			} {
				o3, o5 := make([]float32, n), make([]float32, n)
				f(o3)
				pcbMergeGo(o5, base0, vtaus, false, got, off, cuts, w, 0.7, 0, n)
				for j := range o3 {
					if math.Float32bits(o3[j]) != math.Float32bits(o5[j]) {
						t.Fatalf("T=%d n=%d wide=%v: merge from models [%d] = %g, from τ %g", T, n, pcbVector512, j, o3[j], o5[j])
					}
				}
			}
		}
	}
}

// TestCollectBinsMatchesScalar checks the vector collect pass and the
// vector |τ| keys against their plain-Go twins: sparse and dense matches,
// one and two bins, lengths with a tail, lists that already hold keys.
func TestCollectBinsMatchesScalar(t *testing.T) {
	if !vec.Accelerated() {
		t.Skip("no AVX2")
	}
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{3, 8, 1001, 40000} {
		for _, spread := range []uint32{1, 4, 2048} {
			keys := make([]uint32, n)
			for j := range keys {
				keys[j] = uint32(r.IntN(int(spread)))<<keyTopShift | uint32(r.IntN(1<<keyTopShift))
			}
			for _, two := range []bool{false, true} {
				seed := []uint32{0xdead}
				gi, gj := collectBins(keys, 0, 1, two, slices.Clone(seed), nil)
				wi, wj := collectBinsGo(keys, 0, 1, two, slices.Clone(seed), nil)
				if !slices.Equal(gi, wi) || !slices.Equal(gj, wj) {
					t.Fatalf("n=%d spread=%d two=%v: collectBins differs from collectBinsGo (%d/%d vs %d/%d keys)",
						n, spread, two, len(gi), len(gj), len(wi), len(wj))
				}
			}
		}
		taus := [][]float32{make([]float32, n), make([]float32, n)}
		for m := range taus {
			for j := range taus[m] {
				taus[m][j] = float32(r.NormFloat64())
			}
		}
		got, want := [][]uint32{make([]uint32, n), make([]uint32, n)}, [][]uint32{make([]uint32, n), make([]uint32, n)}
		pcbAbsKeys(got, taus, n)
		pcbAbsKeysGo(want, taus, 0, n)
		for m := range got {
			if !slices.Equal(got[m], want[m]) {
				t.Fatalf("n=%d: pcbAbsKeys differs from pcbAbsKeysGo", n)
			}
		}
	}
}

// TestPCBBetaScanMatchesScalar checks pcbBetaScan (the 16-lane kernel
// that counts the keys against the brackets in registers, or the 8-lane
// keys then pcbScan) against pcbBetaKeysGo then pcbScanGo: the keys, the
// counts, the maxima and the collected keys in order, with lists that
// already hold keys, one-key brackets (no collecting), open brackets, and
// lengths with a tail.
func TestPCBBetaScanMatchesScalar(t *testing.T) {
	if !vec.Accelerated() {
		t.Skip("no AVX2")
	}
	defer func(v bool) { pcbVector512 = v }(pcbVector512)
	widths := []bool{false}
	if pcbVector512 {
		widths = append(widths, true)
	}
	r := rand.New(rand.NewPCG(45, 46))
	for _, wide := range widths {
		pcbVector512 = wide
		for _, T := range []int{1, 3, 9} {
			for _, n := range []int{5, 64, 1003} {
				base := make([]float32, n)
				models := make([][]float32, T)
				for j := range base {
					base[j] = float32(r.NormFloat64())
				}
				for m := range models {
					models[m] = make([]float32, n)
					for j := range models[m] {
						models[m][j] = base[j] + float32(r.NormFloat64()*0.01)
						if r.IntN(6) == 0 {
							models[m][j] = base[j]
						}
					}
				}
				cuts := make([]pcbCut, T)
				for m := range cuts {
					cuts[m] = pcbCut{lo: 1e-4, hi: 0.03}
				}
				want := make([][]uint32, T)
				for m := range want {
					want[m] = make([]uint32, n)
				}
				pcbBetaKeysGo(want, base, models, cuts, 0, n)
				st := make([]pcbScanState, T)
				wst := make([]pcbScanState, T)
				for m := range st {
					sorted := slices.Clone(want[m])
					slices.Sort(sorted)
					var lo, hi uint32
					switch m % 3 {
					case 0: // a bracket around the middle
						lo, hi = sorted[n/3], sorted[2*n/3]
					case 1: // one key (τ = 0 gives many equal keys)
						lo = orderKey(0)
						hi = lo
					default: // open
						lo, hi = 0, ^uint32(0)
					}
					st[m] = pcbScanState{lo: lo, hi: hi, collect: lo != hi, mx: 3, cand: []uint32{9}}
					wst[m] = st[m]
					wst[m].cand = slices.Clone(st[m].cand)
					wst[m].scanGo(want[m])
				}
				got := make([][]uint32, T)
				for m := range got {
					got[m] = make([]uint32, n)
				}
				pcbBetaScan(got, base, models, cuts, n, st)
				for m := range got {
					if !slices.Equal(got[m], want[m]) {
						t.Fatalf("wide=%v T=%d n=%d: pcbBetaScan's keys of model %d differ from pcbBetaKeysGo's", wide, T, n, m)
					}
					g, w := st[m], wst[m]
					if g.above != w.above || g.inside != w.inside || g.mx != w.mx || !slices.Equal(g.cand, w.cand) {
						t.Fatalf("wide=%v T=%d n=%d model %d: counts %d/%d max %x, %d keys; want %d/%d max %x, %d keys",
							wide, T, n, m, g.above, g.inside, g.mx, len(g.cand), w.above, w.inside, w.mx, len(w.cand))
					}
				}
			}
		}
	}
}

// TestPCBNarrowKernels runs the tests of the kernels that have 8- and
// 16-lane forms with the 8-lane ones (pcbVector512 off), which an AVX-512
// CPU would not take otherwise.
func TestPCBNarrowKernels(t *testing.T) {
	if !vec.Accelerated() {
		t.Skip("no AVX2")
	}
	defer func(v bool) { pcbVector512 = v }(pcbVector512)
	pcbVector512 = false
	t.Run("tails", TestPCBTailsMatchSort)
	t.Run("nonfinite", TestPCBTailsScanSubNonFinite)
	t.Run("scan", TestPCBScanAndKthLargest)
	t.Run("bracket", TestPCBBracketBitForBit)
	t.Run("direct", TestPCBDirectMatchesGeneralPath)
}

// TestPCBBetaKeysInfiniteBound checks the β kernels against their twin
// when a τ overflowed to ±Inf and a clip bound is +Inf (x can then be
// NaN, which Exp32 clamps: the kernels must not drop the clamps).
func TestPCBBetaKeysInfiniteBound(t *testing.T) {
	if !vec.Accelerated() {
		t.Skip("no AVX2")
	}
	defer func(v bool) { pcbVector512 = v }(pcbVector512)
	inf := float32(math.Inf(1))
	const n = 37
	taus := [][]float32{make([]float32, n), make([]float32, n)}
	for j := range n {
		taus[0][j] = float32(j) * 0.01
		taus[1][j] = -float32(j) * 0.02
	}
	taus[0][3], taus[1][20] = inf, -inf
	cuts := []pcbCut{{lo: 0.001, hi: inf}, {lo: 0.002, hi: inf}}
	want := [][]uint32{make([]uint32, n), make([]uint32, n)}
	pcbBetaKeysGo(want, nil, taus, cuts, 0, n)
	for _, wide := range []bool{false, pcbVector512} {
		pcbVector512 = wide
		got := [][]uint32{make([]uint32, n), make([]uint32, n)}
		pcbBetaKeys(got, nil, taus, cuts, n)
		for m := range got {
			if !slices.Equal(got[m], want[m]) {
				t.Fatalf("wide=%v: model %d's keys %x, want %x", wide, m, got[m], want[m])
			}
		}
	}
}
