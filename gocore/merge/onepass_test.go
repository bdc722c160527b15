package merge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// onePassMethods are the methods the one-pass selection merges.
var onePassMethods = []string{"ties", "magnitude_prune", "breadcrumbs", "breadcrumbs_ties", "consensus_ties"}

// TestCountFlagMatchesScalar compares countFlag (the vector loop in the
// SIMD build) with its scalar twin: counts, candidates in order, flags and
// the finiteness verdict, over lengths with and without a vector tail,
// windows of every model (with ties at their bounds, unflagged ones, hi
// above 0x7fffffff clamped) and non-finite inputs.
func TestCountFlagMatchesScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 7, 8, 9, 37, 1000, parallel.Chunk + 5} {
		for _, T := range []int{1, 3, 8} {
			for _, bad := range []float32{0, float32(math.NaN()), float32(math.Inf(-1))} {
				b := make([]float32, n)
				x := make([][]float32, T)
				for j := range b {
					b[j] = float32(r.IntN(9)-4) * 0.25
				}
				for m := range x {
					x[m] = make([]float32, n)
					for j := range x[m] {
						x[m][j] = b[j] + float32(r.IntN(17)-8)*0.125
					}
				}
				if bad != 0 {
					x[T-1][n/2] = bad
				}
				var fw flagWindows
				for m := range T {
					for range 2 {
						lo := math.Float32bits(float32(r.IntN(5)) * 0.125)
						hi := lo + math.Float32bits(float32(r.IntN(5))*0.125)/2
						if r.IntN(5) == 0 {
							hi = math.MaxUint32
						}
						fw.add(m, lo, hi, r.IntN(3) > 0)
					}
				}
				name := fmt.Sprintf("n=%d T=%d bad=%v", n, T, bad)
				a1, a2 := make([]int64, fw.n), make([]int64, fw.n)
				c1, c2 := make([][]uint32, fw.n), make([][]uint32, fw.n)
				f1, f2 := make([]uint8, (n+7)/8), make([]uint8, (n+7)/8)
				for i := range f1 {
					f1[i], f2[i] = 0xa5, 0x5a // cleared by both
				}
				ok1 := countFlag(x, b, &fw, a1, c1, f1)
				ok2 := countFlagGo(x, b, &fw, a2, c2, f2)
				if ok1 != ok2 || ok1 != (bad == 0) {
					t.Fatalf("%s: finite %v (scalar %v)", name, ok1, ok2)
				}
				if !ok1 {
					continue
				}
				if !slices.Equal(a1, a2) || !slices.Equal(f1, f2) {
					t.Fatalf("%s: above %v flags %v, scalar %v %v", name, a1, f1[:min(4, len(f1))], a2, f2[:min(4, len(f2))])
				}
				for i := range c1 {
					if !slices.Equal(c1[i], c2[i]) {
						t.Fatalf("%s: window %d candidates differ", name, i)
					}
				}
				// The scalar twin against the definition.
				for j := range n {
					flag := false
					for i := range fw.n {
						a := math.Float32bits(x[fw.wm[i]][j]-b[j]) & 0x7fffffff
						if a >= fw.lo[i] && a <= fw.hi[i] && fw.flag[i] {
							flag = true
						}
					}
					if got := f2[j>>3]&(1<<(j&7)) != 0; got != flag {
						t.Fatalf("%s: entry %d flagged %v, want %v", name, j, got, flag)
					}
				}
			}
		}
	}
}

// onePassData is a merge whose big tensors take the one-pass selection:
// continuous values, or (coarse) values from a small set so that
// magnitudes tie at the cuts (and some cuts fall outside their windows,
// the exactCut fallback), next to tiny tensors that take the two-pass path.
func onePassData(seed uint64, coarse bool, in, out tensor.DType) []Tensor {
	r := rand.New(rand.NewPCG(seed, 99))
	shapes := [][]int{{7}, {exactUnit + 3*parallel.Chunk + 11}, {50, 100}, {3, exactUnit/2 + 5}}
	var ts []Tensor
	if coarse {
		ts = coarseMerge(r, in, shapes, 3)
	} else {
		ts = randomMerge(r, in, shapes, 3)
	}
	for i := range ts {
		ts[i].Out = tensor.Alloc(ts[i].Base.Len(), out)
	}
	return ts
}

// runPaths merges with the one-pass selection on or off.
func runPaths(t *testing.T, method string, p Params, mk func() []Tensor, twoPass bool) ([][]float32, error) {
	t.Helper()
	twoPassOnly = twoPass
	defer func() { twoPassOnly = false }()
	ts := mk()
	_, err := RunReport(method, p, ts)
	return outputs(ts), err
}

// TestOnePassMatchesTwoPass compares the one-pass merge of the TIES family
// with the two-pass path bit for bit (and error for error): every method,
// float32 and bfloat16 inputs and outputs, ties at the cuts, densities
// with empty and full cuts, and Breadcrumbs' two cuts.
func TestOnePassMatchesTwoPass(t *testing.T) {
	type dts struct{ in, out tensor.DType }
	for _, method := range onePassMethods {
		for _, coarse := range []bool{false, true} {
			for _, dt := range []dts{{tensor.F32, tensor.F32}, {tensor.BF16, tensor.BF16}, {tensor.F32, tensor.F16}} {
				for _, density := range []float64{0.2, 0.9, 1e-6} {
					p := testParams(method)
					p.Density = density
					p.Pool = parallel.Pool{Threads: 2}
					name := fmt.Sprintf("%s coarse=%v %v→%v density=%v", method, coarse, dt.in, dt.out, density)
					if !sampleCase(name) {
						continue
					}
					mk := func() []Tensor { return onePassData(uint64(len(method)), coarse, dt.in, dt.out) }
					one, err1 := runPaths(t, method, p, mk, false)
					two, err2 := runPaths(t, method, p, mk, true)
					if fmt.Sprint(err1) != fmt.Sprint(err2) {
						t.Fatalf("%s: error %v, two-pass %v", name, err1, err2)
					}
					for i := range one {
						if j := firstDiff(one[i], two[i]); j >= 0 {
							t.Fatalf("%s: tensor %d entry %d: %v, two-pass %v", name, i, j, one[i][j], two[i][j])
						}
					}
				}
			}
		}
	}
}

// firstDiff is the first index where a and b differ in bits, or −1.
func firstDiff(a, b []float32) int {
	for j := range a {
		if math.Float32bits(a[j]) != math.Float32bits(b[j]) {
			return j
		}
	}
	return -1
}

// TestOnePassIsTaken checks that the one-pass selection merges the big
// tensors' chunks itself and leaves the small ones to the merge pass (so
// that the comparisons above compare two paths).
func TestOnePassIsTaken(t *testing.T) {
	for _, method := range onePassMethods {
		p := testParams(method)
		p.Density = 0.2
		ts := onePassData(1, false, tensor.F32, tensor.F32)
		e, err := newEngine(registry[method], p, ts)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.prepareUnits([]int{0, 1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		for u, want := range []bool{false, true, false, true} {
			for _, ch := range e.tensorChunks(u) {
				if e.premerged[ch.gc] != want {
					t.Fatalf("%s: tensor %d chunk %d premerged %v, want %v", method, u, ch.lc, !want, want)
				}
			}
		}
	}
}

// TestOnePassErrors: a NaN or ±Inf input in a big tensor, and a result
// that overflows float32 or the output dtype, give the two-pass path's
// error (the same entry named).
func TestOnePassErrors(t *testing.T) {
	type tc struct {
		name   string
		out    tensor.DType
		lambda float64
		poison func(ts []Tensor)
	}
	set := func(v tensor.Vec, j int, x float32) { v.Store([]float32{x}, j) }
	cases := []tc{
		{"nan model", tensor.F32, 1, func(ts []Tensor) { set(ts[1].Models[2], 5*parallel.Chunk+3, float32(math.NaN())) }},
		{"inf base", tensor.F32, 1, func(ts []Tensor) { set(ts[1].Base, 77, float32(math.Inf(1))) }},
		{"nan in two tensors", tensor.F32, 1, func(ts []Tensor) {
			set(ts[3].Models[0], 9, float32(math.NaN()))
			set(ts[1].Models[1], 2*parallel.Chunk, float32(math.Inf(-1)))
		}},
		{"overflow float32", tensor.F32, 3e38, nil},
		{"overflow float16", tensor.F16, 2e4, nil},
		{"overflow one entry", tensor.F32, 1, func(ts []Tensor) {
			set(ts[1].Models[0], 4*parallel.Chunk+9, 3e38)
			set(ts[1].Models[1], 4*parallel.Chunk+9, 3e38)
			set(ts[1].Models[2], 4*parallel.Chunk+9, 3e38)
		}},
	}
	for _, method := range onePassMethods {
		for _, c := range cases {
			p := testParams(method)
			p.Density, p.Lambda = 0.2, c.lambda
			mk := func() []Tensor {
				ts := onePassData(3, false, tensor.F32, c.out)
				if c.poison != nil {
					c.poison(ts)
				}
				return ts
			}
			one, err1 := runPaths(t, method, p, mk, false)
			two, err2 := runPaths(t, method, p, mk, true)
			if err2 == nil && c.name != "overflow one entry" {
				t.Fatalf("%s %s: no error", method, c.name)
			}
			if fmt.Sprint(err1) != fmt.Sprint(err2) {
				t.Fatalf("%s %s: error %v, two-pass %v", method, c.name, err1, err2)
			}
			if err2 == nil {
				for i := range one {
					if j := firstDiff(one[i], two[i]); j >= 0 {
						t.Fatalf("%s %s: tensor %d entry %d differs", method, c.name, i, j)
					}
				}
			}
		}
	}
}

// TestOnePassMerger: the streaming Merger, whose output is set only for
// the tensor being merged, gives Run's bits with the one-pass selection.
func TestOnePassMerger(t *testing.T) {
	for _, method := range onePassMethods {
		p := testParams(method)
		p.Density = 0.3
		ts := onePassData(5, false, tensor.BF16, tensor.BF16)
		want, err := runPaths(t, method, p, func() []Tensor { return onePassData(5, false, tensor.BF16, tensor.BF16) }, true)
		if err != nil {
			t.Fatal(err)
		}
		mg, err := NewMerger(method, p, ts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ts {
			out := tensor.Alloc(ts[i].Base.Len(), tensor.BF16)
			for range 2 { // twice: the second call merges again
				if err := mg.Tensor(i, out); err != nil {
					t.Fatal(err)
				}
				got := make([]float32, out.Len())
				out.Load(got, 0)
				if j := firstDiff(got, want[i]); j >= 0 {
					t.Fatalf("%s: tensor %d entry %d: %v, Run %v", method, i, j, got[j], want[i][j])
				}
				out.Store(make([]float32, out.Len()), 0)
			}
		}
	}
}

// TestOnePassWindowMissed: when the strided sample misleads the windows
// (every sampled block large, most other entries small), the cut falls
// outside its window; the unit is then left to the merge pass (exactCut,
// no chunk premerged) and the result is still the two-pass result.
func TestOnePassWindowMissed(t *testing.T) {
	n := exactUnit + 3*parallel.Chunk + 11
	blocks := int64(minSample / sampleBlock)
	stride := (int64(n) + blocks - 1) / blocks
	mk := func() []Tensor {
		r := rand.New(rand.NewPCG(7, 8))
		ts := randomMerge(r, tensor.F32, [][]int{{n}}, 3)
		for m := range 3 {
			x := make([]float32, n)
			for j := range x {
				x[j] = float32(r.NormFloat64()) * 1e-3
				if int64(j)%stride < sampleBlock {
					x[j] = 10 + float32(m)
				}
			}
			ts[0].Models[m].Store(x, 0)
		}
		ts[0].Base.Store(make([]float32, n), 0)
		return ts
	}
	for _, method := range onePassMethods {
		p := testParams(method)
		p.Density = 0.3
		e, err := newEngine(registry[method], p, mk())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.prepareUnits([]int{0}); err != nil {
			t.Fatal(err)
		}
		if e.premerged == nil || slices.Contains(e.premerged, true) {
			t.Fatalf("%s: premerged %v after a missed window, want planned and none", method, e.premerged != nil)
		}
		one, err1 := runPaths(t, method, p, mk, false)
		two, err2 := runPaths(t, method, p, mk, true)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if j := firstDiff(one[0], two[0]); j >= 0 {
			t.Fatalf("%s: entry %d: %v, two-pass %v", method, j, one[0][j], two[0][j])
		}
	}
}

// TestKthLargest compares finishCut's radix select with a sort: narrow
// and wide ranges, many ties, sizes around the sort cutoff.
func TestKthLargest(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{1, 2, 64, 65, 1000, 54321} {
		for _, span := range []uint32{1, 7, 3000, 1 << 20, math.MaxUint32 >> 1} {
			s := make([]uint32, n)
			base := r.Uint32N(1 << 30)
			for j := range s {
				s[j] = base + r.Uint32N(span)
			}
			sorted := slices.Clone(s)
			slices.Sort(sorted)
			for _, k := range []int{1, 2, n / 3, n / 2, n - 1, n} {
				if k < 1 || k > n {
					continue
				}
				if got, want := kthLargest(slices.Clone(s), k), sorted[n-k]; got != want {
					t.Fatalf("n=%d span=%d k=%d: %d, want %d", n, span, k, got, want)
				}
			}
		}
	}
}

// TestCountFlagMergeMatchesSeparateLoops compares the one-loop provisional
// merge (countFlagMerge, SIMD build) with countFlag followed by
// vec.MergeTasks: results bit for bit (zeros' signs, sign elections that
// cancel, Norm with no agreeing weight, TALL votes at every K), counts, candidates, flags, and the
// finiteness of inputs and results (λ large enough to overflow). In the
// plain build it declines, which the test checks too.
func TestCountFlagMergeMatchesSeparateLoops(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	cuts := func(hi uint32) []vec.Cut { return []vec.Cut{vec.Nothing, vec.Everything, {Bits: hi, Allow: 0}} }
	for trial := range 300 {
		n := []int{1, 8, 13, 64, 1000, parallel.Chunk}[trial%6]
		T := 1 + r.IntN(8)
		b := make([]float32, n)
		x := make([][]float32, T)
		for j := range b {
			b[j] = float32(r.IntN(9)-4) * 0.25
		}
		for m := range x {
			x[m] = make([]float32, n)
			for j := range x[m] {
				x[m][j] = b[j] + float32(r.IntN(17)-8)*0.125
				if r.IntN(20) == 0 {
					x[m][j] = float32(math.Copysign(0, -1))
				}
			}
		}
		if trial%25 == 24 {
			x[r.IntN(T)][r.IntN(n)] = float32(math.Inf(1))
		}
		p := vec.TaskMerge{W: make([]float32, T), Bands: make([]vec.Band, T), Lam: float32(r.IntN(3)) + 0.5,
			Disjoint: r.IntN(2) == 0, Norm: r.IntN(2) == 0, DivOn: r.IntN(2) == 0, Div: 1.5}
		if trial%10 == 9 {
			p.Lam = 3e38
		}
		if trial%3 == 0 { // TALL masks (consensus_ties)
			p.TallLam, p.K = make([]float32, T), r.IntN(T+2)
			for m := range T {
				p.TallLam[m] = float32(r.IntN(5)) * 0.25
			}
		}
		var fw flagWindows
		for m := range T {
			p.W[m] = float32(r.IntN(5)) * 0.5
			hi := math.Float32bits(float32(1+r.IntN(8)) * 0.125)
			cs := cuts(hi)
			p.Bands[m] = vec.Band{In: cs[r.IntN(3)], Out: cs[r.IntN(2)]}
			fw.add(m, hi-hi/8, hi, r.IntN(4) > 0)
		}
		name := fmt.Sprintf("trial %d n=%d T=%d", trial, n, T)
		a1, a2 := make([]int64, fw.n), make([]int64, fw.n)
		c1, c2 := make([][]uint32, fw.n), make([][]uint32, fw.n)
		f1, f2 := make([]uint8, (n+7)/8), make([]uint8, (n+7)/8)
		o1, o2 := make([]float32, n), make([]float32, n)
		in1, fin1, ok := countFlagMerge(o1, b, x, &fw, a1, c1, f1, &p)
		if !ok {
			if vec.Accelerated() {
				t.Fatalf("%s: declined a provisional merge", name)
			}
			continue
		}
		in2 := countFlag(x, b, &fw, a2, c2, f2)
		fin2 := vec.MergeTasks(o2, b, x, &p)
		if in1 != in2 {
			t.Fatalf("%s: inputs finite %v, separate loops %v", name, in1, in2)
		}
		if !in1 {
			continue
		}
		if fin1 != fin2 || !slices.Equal(a1, a2) || !slices.Equal(f1, f2) {
			t.Fatalf("%s: finite %v above %v, separate %v %v (or flags differ)", name, fin1, a1, fin2, a2)
		}
		for i := range c1 {
			if !slices.Equal(c1[i], c2[i]) {
				t.Fatalf("%s: window %d candidates differ", name, i)
			}
		}
		if j := firstDiff(o1, o2); j >= 0 {
			t.Fatalf("%s: entry %d: %v, separate loops %v", name, j, o1[j], o2[j])
		}
	}
}

// TestCountGatherMatchesSeparateLoops compares countGather (the 16-lane
// loop) with the separate loops it replaces: countFlagGo's counts and
// candidates of the flagged windows, its flags, vec.MergeTasks' provisional results with the
// flagged ones set to +0, and the flagged entries' indices and inputs
// gathered from the flags; lengths with and without a tail, one or two
// windows per model (unflagged ones, hi clamped), ties at the cuts, TALL
// masks, non-finite inputs and differences that overflow.
func TestCountGatherMatchesSeparateLoops(t *testing.T) {
	var s cgScratch
	if _, _, ok := countGather(make([]float32, 16), make([]float32, 16), [][]float32{make([]float32, 16)},
		&flagWindows{}, &vec.TaskMerge{W: []float32{1}, Bands: []vec.Band{{In: vec.Nothing, Out: vec.Nothing}}}, &s); !ok {
		t.Skip("no 16-lane loop in this build or on this CPU")
	}
	r := rand.New(rand.NewPCG(17, 18))
	cuts := func(hi uint32) []vec.Cut { return []vec.Cut{vec.Nothing, vec.Everything, {Bits: hi, Allow: 0}} }
	for trial := range 400 {
		n := []int{1, 15, 16, 17, 64, 1000, parallel.Chunk, parallel.Chunk + 5}[trial%8]
		T := 1 + r.IntN(8)
		b := make([]float32, n)
		x := make([][]float32, T)
		for j := range b {
			b[j] = float32(r.IntN(9)-4) * 0.25
		}
		for m := range x {
			x[m] = make([]float32, n)
			for j := range x[m] {
				x[m][j] = b[j] + float32(r.IntN(17)-8)*0.125
				if r.IntN(20) == 0 {
					x[m][j] = float32(math.Copysign(0, -1))
				}
			}
		}
		switch trial % 25 {
		case 24:
			x[r.IntN(T)][r.IntN(n)] = float32([]float64{math.Inf(1), math.NaN()}[r.IntN(2)])
		case 23:
			b[r.IntN(n)] = float32(math.Inf(-1))
		case 22: // finite inputs whose difference overflows
			j := r.IntN(n)
			b[j], x[r.IntN(T)][j] = -3e38, 3e38
		}
		p := vec.TaskMerge{W: make([]float32, T), Bands: make([]vec.Band, T), Lam: float32(r.IntN(3)) + 0.5,
			Disjoint: r.IntN(2) == 0, Norm: r.IntN(2) == 0, DivOn: r.IntN(2) == 0, Div: 1.5}
		if trial%10 == 9 {
			p.Lam = 3e38
		}
		if trial%3 == 0 { // TALL masks (consensus_ties)
			p.TallLam, p.K = make([]float32, T), r.IntN(T+2)
			for m := range T {
				p.TallLam[m] = float32(r.IntN(5)) * 0.25
			}
		}
		// Per model: a provisional In cut and, for half the models, an Out
		// cut (or an empty or full one), each at the hi of a window that
		// is usually flagged; some unflagged windows besides.
		var fw flagWindows
		for m := range T {
			p.W[m] = float32(r.IntN(5)) * 0.5
			hi := math.Float32bits(float32(1+r.IntN(8)) * 0.125)
			ho := hi + math.Float32bits(float32(1+r.IntN(4))*0.125)/2
			p.Bands[m] = vec.Band{In: cuts(hi)[r.IntN(3)], Out: vec.Nothing}
			if p.Bands[m].In.Bits == hi {
				fw.add(m, hi-hi/8, hi, r.IntN(4) > 0)
			}
			if r.IntN(2) == 0 {
				p.Bands[m].Out = vec.Cut{Bits: ho}
				fw.add(m, ho-ho/4, ho, r.IntN(4) > 0)
			}
			if fw.n < maxFlagWindows && r.IntN(3) == 0 {
				lo := math.Float32bits(float32(r.IntN(4)) * 0.125)
				fw.add(m, lo, []uint32{lo + 1<<22, math.MaxUint32}[r.IntN(2)], false)
			}
		}
		name := fmt.Sprintf("trial %d n=%d T=%d", trial, n, T)
		o1, o2 := make([]float32, n), make([]float32, n)
		for j := range o1 {
			o1[j] = 7 // written by both
		}
		in1, fin1, ok := countGather(o1, b, x, &fw, &p, &s)
		if !ok {
			t.Fatalf("%s: declined", name)
		}
		W := fw.n
		a2, c2, f2 := make([]int64, W), make([][]uint32, W), make([]uint8, (n+7)/8)
		in2 := countFlagGo(x, b, &fw, a2, c2, f2)
		if in1 != in2 {
			t.Fatalf("%s: inputs finite %v, separate loops %v", name, in1, in2)
		}
		if !in1 {
			continue
		}
		vec.MergeTasks(o2, b, x, &p)
		prov := slices.Clone(o2) // countGather keeps the flagged entries' results
		oc := gatherFlags(T, f2, b, x, o2)
		fin2 := true
		for _, v := range o2 {
			if v-v != 0 {
				fin2 = false
			}
		}
		if fin1 != fin2 {
			t.Fatalf("%s: results finite %v, separate %v", name, fin1, fin2)
		}
		for i := range W {
			if !fw.flag[i] { // not counted
				continue
			}
			if s.above[i] != a2[i] {
				t.Fatalf("%s: window %d: %d above, separate %d", name, i, s.above[i], a2[i])
			}
			if !slices.Equal(s.cand[i][:s.nc[i]], c2[i]) {
				t.Fatalf("%s: window %d candidates differ (%d, separate %d)", name, i, s.nc[i], len(c2[i]))
			}
		}
		if j := firstDiff(o1, prov); j >= 0 {
			t.Fatalf("%s: entry %d: %v, separate loops %v", name, j, o1[j], prov[j])
		}
		for k, j := range oc.idx {
			if math.Float32bits(oc.prov[k]) != 0 || o2[j] != 0 {
				t.Fatalf("%s: gatherFlags left flagged entry %d at %v (provisional %v), not +0", name, j, o2[j], oc.prov[k])
			}
		}
		F := s.nf
		if !slices.Equal(s.idx[:F], oc.idx) || firstDiff(s.base[:F], oc.base) >= 0 || len(oc.base) != F {
			t.Fatalf("%s: %d flagged entries gathered, separate %d (or they differ)", name, F, len(oc.idx))
		}
		for m := range T {
			if firstDiff(s.x[m][:F], oc.x[m]) >= 0 {
				t.Fatalf("%s: model %d's flagged inputs differ", name, m)
			}
		}
		putGather(oc.buf)
	}
	// Three flagged windows on one model: declined.
	b := make([]float32, 64)
	fw := flagWindows{}
	for range 3 {
		fw.add(0, 10, 20, true)
	}
	p := vec.TaskMerge{W: []float32{1}, Bands: []vec.Band{{In: vec.Cut{Bits: 20}, Out: vec.Nothing}}}
	if _, _, ok := countGather(make([]float32, 64), b, [][]float32{b}, &fw, &p, &s); ok {
		t.Fatal("countGather took three flagged windows of one model")
	}
}

// TestAppendMags16 compares the sample's 16-entry block (one vector with
// AVX-512) with its scalar twin, ±0, ties and large values included.
func TestAppendMags16(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	for trial := range 200 {
		var x, b [16]float32
		for j := range x {
			b[j] = float32(r.NormFloat64())
			x[j] = b[j] + float32(r.NormFloat64()*0.01)
			switch r.IntN(8) {
			case 0:
				x[j] = b[j]
			case 1:
				x[j], b[j] = float32(math.Copysign(0, -1)), 0
			case 2:
				x[j], b[j] = 3e38, -3e38
			}
		}
		pre := []uint32{uint32(trial)}
		got := appendMags16(slices.Clone(pre), &x, &b)
		want := appendMags16Go(slices.Clone(pre), &x, &b)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d: %x, twin %x", trial, got, want)
		}
	}
}

// TestCutInWindow compares cutInWindow with a sort of all the candidates:
// the kk-th largest, the count above it and each chunk's count equal to
// it, for windows narrow and wide (the whole range too), many ties, empty
// chunks, and kk from 1 to the number of candidates.
func TestCutInWindow(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, n := range []int{1, 3, 100, 5000} {
		for _, span := range []uint32{1, 5, 2048, 2049, 1 << 20, math.MaxUint32} {
			lo := uint32(0)
			if span != math.MaxUint32 {
				lo = r.Uint32N(1 << 30)
			}
			hi := lo + span - 1
			if span == math.MaxUint32 {
				hi = math.MaxUint32
			}
			var lists [][]uint32
			var all []uint32
			for len(all) < n {
				c := make([]uint32, min(n-len(all), r.IntN(n+1)))
				for j := range c {
					c[j] = lo + r.Uint32N(span)
					if j%3 == 0 && span > 1 {
						c[j] = hi // ties at the top of the window
					}
				}
				lists = append(lists, c)
				all = append(all, c...)
			}
			sorted := slices.Clone(all)
			slices.Sort(sorted)
			for _, kk := range []int{1, 2, n / 3, n / 2, n - 1, n} {
				if kk < 1 || kk > n {
					continue
				}
				v, gt, eq := cutInWindow(lists, lo, hi, int64(kk))
				if want := sorted[n-kk]; v != want {
					t.Fatalf("n=%d span=%d kk=%d: %d, want %d", n, span, kk, v, want)
				}
				var wgt int64
				for _, a := range all {
					if a > v {
						wgt++
					}
				}
				if gt != wgt {
					t.Fatalf("n=%d span=%d kk=%d: %d above, want %d", n, span, kk, gt, wgt)
				}
				for c, l := range lists {
					var q int32
					for _, a := range l {
						if a == v {
							q++
						}
					}
					if eq[c] != q {
						t.Fatalf("n=%d span=%d kk=%d chunk %d: %d equal, want %d", n, span, kk, c, eq[c], q)
					}
				}
			}
		}
	}
}
