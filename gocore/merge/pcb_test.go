package merge

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/topk"
)

// pcbOutputs merges ts with PCB and returns copies of the outputs.
func pcbOutputs(t *testing.T, p Params, ts []Tensor) [][]float32 {
	t.Helper()
	if err := Run("pcb", p, ts); err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, len(ts))
	for i, tt := range ts {
		out[i] = make([]float32, tt.Out.Len())
		tt.Out.Load(out[i], 0)
	}
	return out
}

// TestPCBKeptKeysBitForBit checks that the merge pass gives the same bits
// whether it decodes β from the keys kept by the preparation or scores the
// entries again: with the budget for every unit, for none, and for some,
// per tensor and with the global scope, at several thread counts, and
// through the streaming Merger.
func TestPCBKeptKeysBitForBit(t *testing.T) {
	defer func(b int64) { pcbKeepBytes = b }(pcbKeepBytes)
	shapes := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}, {exactUnit + parallel.Chunk + 11}}
	for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
		r := rand.New(rand.NewPCG(11, 12))
		ts := randomMerge(r, tensor.F32, shapes, 3)
		p := Params{Lambda: 0.8, Density: 0.3, Scope: scope, Weights: []float32{1, 0.5, 2}}
		pcbKeepBytes = 0
		want := pcbOutputs(t, p, ts)
		// 3 models × 4 B per entry: room for the two small tensors only.
		for _, budget := range []int64{keyCacheBytes, 3 * 4 * (7 + 5000)} {
			for _, threads := range []int{1, 2, 3} {
				pcbKeepBytes = budget
				p.Pool = parallel.Pool{Threads: threads}
				got := pcbOutputs(t, p, ts)
				for i := range want {
					if !slices.Equal(got[i], want[i]) {
						t.Fatalf("scope %v, budget %d, %d threads: tensor %q differs from the merge that scores again",
							scope, budget, threads, ts[i].Name)
					}
				}
			}
		}
		pcbKeepBytes = keyCacheBytes
		mg, err := NewMerger("pcb", p, ts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ts {
			out := tensor.Alloc(ts[i].Base.Len(), tensor.F32)
			if err := mg.Tensor(i, out); err != nil {
				t.Fatal(err)
			}
			if got := out.F32; !slices.Equal(got, want[i]) {
				t.Fatalf("scope %v: Merger.Tensor(%d) differs from Run", scope, i)
			}
		}
	}
}

// TestPCBKeptKeysReleased checks the budget bookkeeping: keys are held
// between preparation and merge, and every byte is handed back once every
// chunk is merged.
func TestPCBKeptKeysReleased(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	ts := randomMerge(r, tensor.F32, [][]int{{50, 100}, {3, 2*parallel.Chunk + 3}}, 2)
	e, err := newEngine(registry["pcb"], Params{Lambda: 1, Density: 0.5}, ts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.prepareAll(); err != nil {
		t.Fatal(err)
	}
	if want := int64(2 * 4 * (5000 + 6*parallel.Chunk + 9)); e.pcbKeys.bytes != want {
		t.Fatalf("held %d bytes after preparation, want %d", e.pcbKeys.bytes, want)
	}
	if err := e.mergeChunks(e.chunks); err != nil {
		t.Fatal(err)
	}
	if e.pcbKeys.bytes != 0 {
		t.Fatalf("held %d bytes after the merge, want 0", e.pcbKeys.bytes)
	}
	for u := range e.pcbKeys.units {
		if e.pcbKeys.units[u].keys != nil || e.pcbKeys.units[u].chunks != nil {
			t.Fatalf("unit %d still holds its keys", u)
		}
	}
}

// TestSelectKeysMatchesSort checks selectKeys's collect pass and its radix
// fallback against sorting: keys with many repeats, shared and distinct
// bins, several targets per stream (the extremes included), with and
// without the key cache, at 1 and 3 workers.
func TestSelectKeysMatchesSort(t *testing.T) {
	defer func(b int64) { keyCollectBytes = b }(keyCollectBytes)
	r := rand.New(rand.NewPCG(21, 22))
	ts := randomMerge(r, tensor.F32, [][]int{{3, 2*parallel.Chunk + 3}}, 2)
	e, err := newEngine(registry["pcb"], Params{Lambda: 1, Density: 0.5}, ts)
	if err != nil {
		t.Fatal(err)
	}
	un := e.units()[0]
	n := int(un.n)
	const streams = 3
	keys := make([][]uint32, streams)
	for s := range keys {
		keys[s] = make([]uint32, n)
		for j := range keys[s] {
			switch s {
			case 0: // few distinct values: one bin, many ties
				keys[s][j] = 0x40000000 + uint32(r.IntN(5))
			case 1: // spread over every bin
				keys[s][j] = r.Uint32()
			default: // float-like: a narrow band of bins
				keys[s][j] = orderKey(float32(r.NormFloat64()))
			}
		}
	}
	offs := make([]int, len(un.chunks))
	for c := 1; c < len(un.chunks); c++ {
		offs[c] = offs[c-1] + un.chunks[c-1].hi - un.chunks[c-1].lo
	}
	src := func(ch chunkRef, _ *workspace, dst [][]uint32) error {
		c := slices.IndexFunc(un.chunks, func(x chunkRef) bool { return x == ch })
		for s := range dst {
			copy(dst[s], keys[s][offs[c]:offs[c]+ch.hi-ch.lo])
		}
		return nil
	}
	var targets []keyTarget
	for s := range streams {
		for _, k := range []int64{1, 2, int64(n) / 5, int64(n) / 2, int64(n) - 1, int64(n)} {
			targets = append(targets, keyTarget{s, k})
		}
	}
	targets = append(targets, keyTarget{1, 7}) // a stream's targets need not be adjacent
	for _, collect := range []int64{keyCacheBytes, 0} {
		for _, workers := range []int{1, 3} {
			keyCollectBytes = collect
			got, kept, err := e.selectKeys(un.chunks, streams, targets, true, nil, workers, src)
			if err != nil {
				t.Fatal(err)
			}
			for s := range kept {
				if !slices.Equal(kept[s], keys[s]) {
					t.Fatalf("collect budget %d, %d workers: kept keys of stream %d differ", collect, workers, s)
				}
			}
			for i, tg := range targets {
				srt := slices.Clone(keys[tg.s])
				slices.Sort(srt)
				if want := srt[int64(n)-tg.k]; got[i] != want {
					t.Errorf("collect budget %d, %d workers: stream %d, k=%d: got %#x, want %#x",
						collect, workers, tg.s, tg.k, got[i], want)
				}
			}
		}
	}
}

// TestPCBSelectionPathsBitForBit checks that PCB's outputs do not depend
// on the selection path: clip bounds by tail heaps or by a selection,
// selections by a collect pass or by radix passes.
func TestPCBSelectionPathsBitForBit(t *testing.T) {
	defer func(b, m int64) { keyCollectBytes, pcbTailMax = b, m }(keyCollectBytes, pcbTailMax)
	r := rand.New(rand.NewPCG(23, 24))
	ts := randomMerge(r, tensor.F32, [][]int{{50, 100}, {3, 2*parallel.Chunk + 3}}, 3)
	for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
		p := Params{Lambda: 0.8, Density: 0.3, Scope: scope, Pool: parallel.Pool{Threads: 2}}
		keyCollectBytes, pcbTailMax = 0, 0
		want := pcbOutputs(t, p, ts)
		for _, c := range []struct {
			collect, tails int64
		}{{keyCacheBytes, 0}, {0, 1 << 20}, {keyCacheBytes, 1 << 20}} {
			keyCollectBytes, pcbTailMax = c.collect, c.tails
			got := pcbOutputs(t, p, ts)
			for i := range want {
				if !slices.Equal(got[i], want[i]) {
					t.Fatalf("scope %v, collect budget %d, tail ranks ≤ %d: tensor %q differs from the radix selections",
						scope, c.collect, c.tails, ts[i].Name)
				}
			}
		}
	}
}

// TestPCBTailsMatchSort checks pcbTailsScanSub (vector or plain, whichever
// the build runs) with the heaps of several workers merged as
// pcbClipTails does: the rLo-th smallest and rHi-th largest |τ| as a sort
// gives them, for random, sorted (every key enters a heap), reversed and
// constant entries, ties, and ranks from 1 to beyond a worker's share.
func TestPCBTailsMatchSort(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	for _, n := range []int{1, 7, 1000, 20011} {
		base := make([]float32, n)
		for j := range base {
			base[j] = float32(r.NormFloat64()) * float32(math.Pow(10, float64(r.IntN(6)-3)))
			if r.IntN(7) == 0 {
				base[j] = float32(r.IntN(3)) // ties, zeros
			}
		}
		asc := slices.Clone(base)
		slices.SortFunc(asc, func(a, b float32) int { return cmp.Compare(abs32(a), abs32(b)) })
		desc := slices.Clone(asc)
		slices.Reverse(desc)
		for name, x := range map[string][]float32{"random": base, "ascending": asc, "descending": desc, "constant": make([]float32, n)} {
			keys := make([]uint32, n)
			for j, v := range x {
				keys[j] = topk.AbsBits(v)
			}
			slices.Sort(keys)
			for _, rk := range []int{1, 2, 3, n/3 + 1, n} {
				rk = min(max(rk, 1), n)
				for _, workers := range []int{1, 3} {
					tails := make([]pcbTails, workers)
					for w := range tails {
						tails[w] = pcbTails{rLo: rk, rHi: rk}
					}
					piece := (n + workers - 1) / workers
					for w := range workers {
						lo, hi := min(w*piece, n), min((w+1)*piece, n)
						// Two calls per worker: the heaps carry over.
						mid := (lo + hi) / 2
						zero := make([]float32, n) // τ = x − 0 = x
						if !pcbTailsScanSub(x[lo:mid], zero, &tails[w]) || !pcbTailsScanSub(x[mid:hi], zero, &tails[w]) {
							t.Fatalf("%s n=%d: pcbTailsScanSub reports a finite input as not finite", name, n)
						}
					}
					var los, his []uint32
					for w := range tails {
						los = append(los, tails[w].lo...)
						his = append(his, tails[w].hi...)
					}
					slices.Sort(los)
					slices.Sort(his)
					if got, want := los[rk-1], keys[rk-1]; got != want {
						t.Fatalf("%s n=%d r=%d workers=%d: %d-th smallest %#x, want %#x", name, n, rk, workers, rk, got, want)
					}
					if got, want := his[len(his)-rk], keys[n-rk]; got != want {
						t.Fatalf("%s n=%d r=%d workers=%d: %d-th largest %#x, want %#x", name, n, rk, workers, rk, got, want)
					}
				}
			}
		}
	}
}

// TestPCBDirectMatchesGeneralPath checks PCB's direct merge pass (inputs
// read in place, τ made in the kernel, output written in place) against
// mergeChunk's general path (task-vector buffers, combine) bit for bit:
// float32 and bfloat16 storage, both scopes, with the β keys kept and
// scored again, weights and λ.
func TestPCBDirectMatchesGeneralPath(t *testing.T) {
	defer func(b int64) { pcbKeepBytes = b }(pcbKeepBytes)
	defer func() { generalOnly = false }()
	shapes := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}}
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
			for _, budget := range []int64{keyCacheBytes, 0} {
				pcbKeepBytes = budget
				p := Params{Lambda: 0.8, Density: 0.3, Scope: scope, Weights: []float32{1, 0.5, 2}}
				var res [2][][]float32
				for i, general := range []bool{true, false} {
					generalOnly = general
					ts := randomMerge(rand.New(rand.NewPCG(31, 32)), dt, shapes, 3)
					res[i] = pcbOutputs(t, p, ts)
				}
				for k := range res[0] {
					if !slices.Equal(res[0][k], res[1][k]) {
						t.Fatalf("%v, scope %v, budget %d: tensor %d of the direct pass differs from the general path", dt, scope, budget, k)
					}
				}
			}
		}
	}
}

// TestPCBBracketBitForBit checks the bracket path of PCB's β selection
// (pcbBetaBracket) against selectKeys: the same outputs with brackets
// that hold the cut, with brackets so narrow that most miss (the
// fallback), over densities from a handful of entries to all of them,
// inputs with many equal τ (ties at the cut), both scopes, kept and
// rescored keys, 1 and 2 workers.
func TestPCBBracketBitForBit(t *testing.T) {
	defer func(m int64, s, k float64, b int64) {
		pcbBracketMin, pcbBracketSigmas, pcbBracketSlack, pcbKeepBytes = m, s, k, b
	}(pcbBracketMin, pcbBracketSigmas, pcbBracketSlack, pcbKeepBytes)
	shapes := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}}
	for _, data := range []string{"normal", "ties"} {
		r := rand.New(rand.NewPCG(41, 42))
		ts := randomMerge(r, tensor.F32, shapes, 3)
		if data == "ties" {
			for _, tt := range ts {
				for _, mv := range tt.Models {
					for j := range mv.F32 {
						switch r.IntN(4) {
						case 0:
							mv.F32[j] = tt.Base.F32[j] // τ = 0
						case 1:
							mv.F32[j] = tt.Base.F32[j] + 0.5
						}
					}
				}
			}
		}
		for _, density := range []float64{1e-4, 0.3, 0.75, 1} {
			for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
				for _, threads := range []int{1, 2} {
					p := Params{Lambda: 0.8, Density: density, Scope: scope, Weights: []float32{1, 0.5, 2},
						Pool: parallel.Pool{Threads: threads}}
					pcbBracketMin, pcbKeepBytes = math.MaxInt64, keyCacheBytes
					want := pcbOutputs(t, p, ts)
					for _, c := range []struct {
						sigmas, slack float64
						keep          int64
					}{{6, 16, keyCacheBytes}, {6, 16, 0}, {0, 0, keyCacheBytes}, {0, 0, 0}} {
						pcbBracketMin, pcbBracketSigmas, pcbBracketSlack, pcbKeepBytes = 0, c.sigmas, c.slack, c.keep
						got := pcbOutputs(t, p, ts)
						for i := range want {
							if !slices.Equal(got[i], want[i]) {
								t.Fatalf("%s, density %g, scope %v, %d threads, bracket ±%gσ+%g, budget %d: tensor %q differs from selectKeys's",
									data, density, scope, threads, c.sigmas, c.slack, c.keep, ts[i].Name)
							}
						}
					}
				}
			}
		}
	}
}

// TestPCBScanAndKthLargest checks pcbScan (vector or plain, whichever the
// build runs) against pcbScanGo, and kthLargestKeys against a sort.
func TestPCBScanAndKthLargest(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 44))
	for _, n := range []int{0, 5, 16, 1003, 40000} {
		keys := make([]uint32, n)
		for j := range keys {
			keys[j] = r.Uint32()
			if r.IntN(5) == 0 {
				keys[j] = uint32(r.IntN(3)) << 30
			}
		}
		sorted := slices.Clone(keys)
		slices.Sort(sorted)
		for _, br := range [][2]uint32{{0, math.MaxUint32}, {1 << 30, 1 << 31}, {1 << 31, 1 << 31}, {5, 4}, {0x80000000, 0xc0000001}} {
			for _, collect := range []bool{true, false} {
				seed := []uint32{7}
				a, in, mx, l := pcbScan(keys, br[0], br[1], collect, slices.Clone(seed))
				wa, win, wmx, wl := pcbScanGo(keys, br[0], br[1], collect, slices.Clone(seed))
				if a != wa || in != win || mx != wmx || !slices.Equal(l, wl) {
					t.Fatalf("n=%d bracket %x collect %v: pcbScan = %d, %d, %x, %d keys; pcbScanGo %d, %d, %x, %d keys",
						n, br, collect, a, in, mx, len(l), wa, win, wmx, len(wl))
				}
			}
		}
		for _, k := range []int{1, 2, n / 2, n - 1, n} {
			if k < 1 || k > n {
				continue
			}
			lists := [][]uint32{keys[:n/3], keys[n/3:]}
			if got, want := kthLargestKeys(lists, int64(k)), sorted[n-k]; got != want {
				t.Fatalf("n=%d: kthLargestKeys(%d) = %x, want %x", n, k, got, want)
			}
		}
	}
}

// TestPCBTailsScanSubNonFinite checks that pcbTailsScanSub (vector or
// plain) and its twin report a NaN or ±Inf model entry wherever it lies
// (in a vector group or the tail, with keys that would or would not enter
// a heap), and take a τ that overflows to ±Inf from finite inputs as a
// key like any other.
func TestPCBTailsScanSubNonFinite(t *testing.T) {
	r := rand.New(rand.NewPCG(33, 34))
	for _, n := range []int{5, 40, 1000} {
		base := make([]float32, n)
		x := make([]float32, n)
		for j := range x {
			base[j] = float32(r.NormFloat64())
			x[j] = base[j] + float32(r.NormFloat64()*0.01)
		}
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			for _, at := range []int{0, n / 2, n - 1} {
				y := slices.Clone(x)
				y[at] = bad
				for _, f := range []func(tl *pcbTails) bool{
					func(tl *pcbTails) bool { return pcbTailsScanSub(y, base, tl) },
					func(tl *pcbTails) bool { return pcbTailsScanSubGo(y, base, tl, 0, n) },
				} {
					tl := &pcbTails{rLo: 2, rHi: 2}
					if f(tl) {
						t.Fatalf("n=%d: %v at %d not reported", n, bad, at)
					}
				}
			}
		}
		// Finite inputs whose difference overflows: +Inf's key enters.
		y, b := slices.Clone(x), slices.Clone(base)
		y[n/2], b[n/2] = math.MaxFloat32, -math.MaxFloat32
		tl := &pcbTails{rLo: 1, rHi: 1}
		if !pcbTailsScanSub(y, b, tl) || tl.hi[0] != pcbFiniteKey {
			t.Fatalf("n=%d: an overflowing τ from finite inputs: ok=%v, largest key %#x", n, tl.hi != nil, tl.hi)
		}
	}
}
