package merge

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestSelectDesc checks the radix selection against a comparison sort:
// every rank of random bits, magnitudes with many ties, every value of the
// top bits, values that differ only in the low digits, split into shares
// of every size (empty ones included).
func TestSelectDesc(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	cases := map[string][]uint32{"one": {42}}
	rnd := make([]uint32, 5000)
	for i := range rnd {
		rnd[i] = r.Uint32()
	}
	cases["random"] = rnd
	ties := make([]uint32, 3000)
	for i := range ties {
		ties[i] = uint32(r.IntN(7)) << 20 & 0x7fffffff
	}
	cases["ties"] = ties
	low := make([]uint32, 4000)
	for i := range low {
		low[i] = 0x3c000000 | uint32(r.IntN(1<<12)) // one top digit, spread over the lower two
	}
	cases["low digits"] = low
	mags := make([]uint32, 6000)
	for i := range mags {
		mags[i] = math.Float32bits(float32(math.Abs(r.NormFloat64() * 0.01)))
	}
	cases["magnitudes"] = mags
	cases["edges"] = []uint32{0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 2047, 2048, 1 << 21, 1<<21 - 1, 1 << 22, 1<<22 - 1, 1023, 1024}
	for name, in := range cases {
		want := slices.Clone(in)
		slices.Sort(want)
		slices.Reverse(want)
		for _, parts := range []int{1, 2, 3, 7} {
			var shares [][]uint32
			for p := range parts {
				shares = append(shares, in[len(in)*p/parts:len(in)*(p+1)/parts])
			}
			shares = append(shares, nil)
			ranks := make([]int, len(in))
			for i := range ranks {
				ranks[i] = len(in) - 1 - i // every rank, in an order the sort does not give
			}
			got := selectDesc(shares, ranks)
			for i, rk := range ranks {
				if got[i] != want[rk] {
					t.Fatalf("%s, %d shares: rank %d = %#x, want %#x", name, parts, rk, got[i], want[rk])
				}
			}
			for rk := 0; rk < len(in); rk += 97 { // close pairs, as a window asks: often one bin
				pair := []int{rk, min(rk+40, len(in)-1)}
				if got := selectDesc(shares, pair); got[0] != want[pair[0]] || got[1] != want[pair[1]] {
					t.Fatalf("%s, %d shares: ranks %v = %#x, want %#x, %#x", name, parts, pair, got, want[pair[0]], want[pair[1]])
				}
			}
			if !slices.Equal(slices.Concat(shares...), in) {
				t.Fatalf("%s: selectDesc changed its shares", name)
			}
		}
	}
	if got := selectDesc([][]uint32{{1, 2}}, nil); len(got) != 0 {
		t.Fatalf("no ranks: got %v", got)
	}
}

// TestCheckedUnits checks which merges skip the merge pass's input checks:
// those whose top-k counting pass read (and checked) every input of the
// unit, and no other.
func TestCheckedUnits(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	for _, tc := range []struct {
		method string
		want   bool
	}{{"ties", true}, {"breadcrumbs_ties", true}, {"dare_ties", false}, {"task_arithmetic", false}} {
		ts := randomMerge(r, tensor.F32, [][]int{{50, 100}, {7}}, 2)
		e, err := newEngine(registry[tc.method], Params{Density: 0.5, Lambda: 1}, ts)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.prepareAll(); err != nil {
			t.Fatal(err)
		}
		for u := range e.units() {
			if got := e.checked != nil && e.checked[u]; got != tc.want {
				t.Fatalf("%s: unit %d checked = %v, want %v", tc.method, u, got, tc.want)
			}
		}
	}
}

// BenchmarkSelectDesc selects a ties window's two ranks (density 0.2,
// sampleBounds' margins) from a full-size sample of float32 magnitudes
// split in two shares, as windows does per model.
func BenchmarkSelectDesc(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	s := make([]uint32, sampleSize)
	for i := range s {
		s[i] = math.Float32bits(float32(math.Abs(r.NormFloat64() * 0.01)))
	}
	top, bot := sampleBounds(1<<22/5, 1<<22, len(s))
	shares := [][]uint32{s[:len(s)/2], s[len(s)/2:]}
	for b.Loop() {
		selectDesc(shares, []int{top, bot})
	}
}

// TestWindowsSampleLayout checks that the sample's block reads of a chunk
// stored in layout order (every method's float32 and bfloat16 tensors, a
// row method's untransposed ones; all models at once) bracket the same
// ranks as reading each sample entry through storageIndex: the windows are
// equal, for row and elementwise methods, transposed or not, in both
// dtypes, and with a model whose dtype is not the base's (read entry by
// entry, the others by blocks).
func TestWindowsSampleLayout(t *testing.T) {
	defer func() { generalOnly = false }()
	shapes := [][]int{{512, 384}, {300, 1000}}
	for _, method := range []string{"neuro", "della", "ties"} {
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			for _, layout := range []string{"", "transposed", "mixed"} {
				transposed := layout == "transposed"
				var got [2][]window
				for i, general := range []bool{false, true} {
					generalOnly = general
					r := rand.New(rand.NewPCG(8, 9))
					ts := randomMerge(r, dt, shapes, 3)
					ts[0].Transposed = transposed
					if layout == "mixed" {
						other := tensor.F32
						if dt == tensor.F32 {
							other = tensor.BF16
						}
						for ti := range ts {
							x := ts[ti].Models[0]
							y := tensor.Alloc(x.Len(), other)
							tensor.Convert(y, x)
							ts[ti].Models[0] = y
						}
					}
					p := testParams(method)
					p.Pool = parallel.Pool{Threads: 2}
					e, err := newEngine(registry[method], p, ts)
					if err != nil {
						t.Fatal(err)
					}
					un := e.units()[0]
					if un.n <= exactUnit {
						t.Fatalf("unit of %d entries: no sample", un.n)
					}
					got[i], _ = e.windows(un, []rankTarget{{0, un.n / 5}, {2, un.n / 2}})
				}
				if !slices.Equal(got[0], got[1]) {
					t.Errorf("%s %v %s: windows %v, entry by entry %v", method, dt, layout, got[0], got[1])
				}
			}
		}
	}
}

// BenchmarkWindows times the selections' sampling (engine.windows) of
// BenchmarkMerge's four tensors for ties' four targets (density 0.2),
// each time after BenchmarkLimits' triad has flushed the caches: the
// sample's reads are cache and TLB misses.
func BenchmarkWindows(b *testing.B) {
	all := benchTensorsFor()
	triadArrays()
	p := testParams("ties")
	p.Density, p.Lambda, p.Seed = 0.2, 1, 1
	e, err := newEngine(registry["ties"], p, all)
	if err != nil {
		b.Fatal(err)
	}
	units := e.units()
	for b.Loop() {
		b.StopTimer()
		triadOnce()
		b.StartTimer()
		for _, un := range units {
			tg := make([]rankTarget, e.T)
			for m := range tg {
				tg[m] = rankTarget{m, un.n / 5}
			}
			e.windows(un, tg)
		}
	}
}

// TestCountAboveEq checks the branch-free count against the comparisons
// written out, on values with many ties, the extremes and an empty slice.
func TestCountAboveEq(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 2))
	vals := make([]uint32, 1000)
	for i := range vals {
		vals[i] = uint32(r.IntN(9)) << 28
	}
	vals[0], vals[1] = 0, math.MaxUint32
	tests := []struct {
		name string
		s    []uint32
		v    uint32
	}{
		{"empty", nil, 5},
		{"ties", vals, 4 << 28},
		{"zero", vals, 0},
		{"max", vals, math.MaxUint32},
		{"between", vals, 3<<28 + 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var gt, eq int
			for _, a := range tc.s {
				switch {
				case a > tc.v:
					gt++
				case a == tc.v:
					eq++
				}
			}
			if g, q := countAboveEq(tc.s, tc.v); g != gt || q != eq {
				t.Fatalf("countAboveEq = (%d, %d), want (%d, %d)", g, q, gt, eq)
			}
		})
	}
}
