package evolve

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

func constCfg(s search.Strategy, f, cr float64) Config {
	return Config{Strategy: s, Schedule: search.ScheduleSpec{Kind: "constant", F: f, CR: cr}, Generations: 10, Seed: 7}
}

// vecs wraps float32 slices as Vecs.
func vecs(xs ...[]float32) []tensor.Vec {
	out := make([]tensor.Vec, len(xs))
	for i, x := range xs {
		out[i] = tensor.FromF32(x)
	}
	return out
}

// Dyadic values and F = 0.5 make every expected vector exact.
var smallPop = [][]float32{
	{1, 2, 3, 4},       // 0
	{0.5, -1, 4, 0},    // 1
	{2, 2, 2, 2},       // 2
	{-3, 0.25, 1, 8},   // 3
	{0, 0, 0, 0},       // 4
	{1.5, 1.5, 1.5, 6}, // 5
}

func TestOffspringDonorsCR1(t *testing.T) {
	for _, c := range []struct {
		name string
		s    search.Strategy
		i    int
		refs []int
		want []float32
	}{
		// x0 + 0.5·(x2 − x0) = (1,2,3,4) + 0.5·(1,0,−1,−2)
		{"evolver", StrategyEvolver, 0, []int{2}, []float32{1.5, 2, 2.5, 3}},
		// x1 + 0.5(x2 − x3) = (0.5,−1,4,0) + 0.5·(5, 1.75, 1, −6)
		{"rand/1", search.Rand1Bin, 0, []int{1, 2, 3}, []float32{3, -0.125, 4.5, -3}},
		// x5 + 0.5(x0 − x3) = (1.5,1.5,1.5,6) + 0.5·(4, 1.75, 2, −4)
		{"best/1", search.Best1Bin, 2, []int{5, 0, 3}, []float32{3.5, 2.375, 2.5, 4}},
		// x2 + 0.5(x5 − x2) + 0.5(x1 − x4) = (2,2,2,2) + (−.25,−.25,−.25,2) + (.25,−.5,2,0)
		{"current-to-best/1", search.CurrentToBest1Bin, 2, []int{5, 1, 4}, []float32{2, 1.25, 3.75, 4}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := constCfg(c.s, 0.5, 1)
			if err := cfg.Validate(4); err != nil {
				t.Fatal(err)
			}
			out := make([]float32, 4)
			tr := Trial{Individual: c.i, F: 0.5, CR: 1, Refs: c.refs, JRand: -1}
			taken, err := Offspring(tensor.FromF32(out), vecs(smallPop...), &cfg, &tr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(out, c.want) || taken != 4 {
				t.Fatalf("got %v (taken %d), want %v (taken 4)", out, taken, c.want)
			}
		})
	}
}

func TestOffspringCR0(t *testing.T) {
	for _, c := range []struct {
		name  string
		jrand int
		want  []float32
	}{
		{"no forced index keeps the parent", -1, []float32{1, 2, 3, 4}},
		// element 2 from the donor x0 + 0.5·(x3 − x0): 3 + 0.5·(1 − 3) = 2
		{"forced index 2", 2, []float32{1, 2, 2, 4}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := constCfg(StrategyEvolver, 0.5, 0)
			out := make([]float32, 4)
			tr := Trial{Individual: 0, F: 0.5, CR: 0, Refs: []int{3}, JRand: c.jrand}
			taken, err := Offspring(tensor.FromF32(out), vecs(smallPop...), &cfg, &tr)
			if err != nil {
				t.Fatal(err)
			}
			wantTaken := int64(0)
			if c.jrand >= 0 {
				wantTaken = 1
			}
			if !slices.Equal(out, c.want) || taken != wantTaken {
				t.Fatalf("got %v (taken %d), want %v (taken %d)", out, taken, c.want, wantTaken)
			}
		})
	}
}

// randomPop is np individuals of n float32 values in [−1, 1).
func randomPop(np, n int, seed uint64) [][]float32 {
	r := search.NewRNG(seed)
	pop := make([][]float32, np)
	for i := range pop {
		pop[i] = make([]float32, n)
		for j := range pop[i] {
			pop[i][j] = float32(2*r.Float64() - 1)
		}
	}
	return pop
}

// donorRef is the donor element j computed from the strategy's definition.
func donorRef(s search.Strategy, pop [][]float32, i int, refs []int, f float32, j int) float32 {
	// Explicit conversions round each product, so no multiply-add is fused.
	switch s {
	case StrategyEvolver:
		return pop[i][j] + float32(f*(pop[refs[0]][j]-pop[i][j]))
	case search.CurrentToBest1Bin:
		c := pop[i][j]
		a := float32(f * (pop[refs[0]][j] - c))
		b := float32(f * (pop[refs[1]][j] - pop[refs[2]][j]))
		return c + a + b
	}
	return pop[refs[0]][j] + float32(f*(pop[refs[1]][j]-pop[refs[2]][j]))
}

// maskRef re-derives the element mask from the package's stream definition.
func maskRef(cfg *Config, tr *Trial, n int) []bool {
	key := rng.Mix(rng.Key(cfg.Seed, "npsfuse/evolve/trial", tr.Generation) + uint64(tr.Individual))
	m := make([]bool, n)
	for b := 0; b*parallel.Chunk < n; b++ {
		lo, hi := b*parallel.Chunk, min((b+1)*parallel.Chunk, n)
		r := search.NewRNG(rng.Bits(key, uint64(b)))
		if tr.CR >= SparseCR {
			thr := uint64(math.Floor(tr.CR*65536 + 0.5))
			for j := lo; j < hi; j += 4 {
				w := r.Uint64()
				for l := 0; l < 4 && j+l < hi; l++ {
					m[j+l] = (w>>(16*l))&0xffff < thr
				}
			}
			continue
		}
		if tr.CR == 0 {
			continue
		}
		for j := lo - 1; ; {
			u := 1 - r.Float64()
			gap := int64(math.Floor(math.Log(u) / math.Log1p(-tr.CR)))
			if gap < 0 || int64(j)+1+gap >= int64(hi) {
				break
			}
			j += 1 + int(gap)
			m[j] = true
		}
	}
	if tr.JRand >= 0 {
		m[tr.JRand] = true
	}
	return m
}

func TestOffspringElementMatchesDefinition(t *testing.T) {
	const n = 2*parallel.Chunk + 1234
	pop := randomPop(5, n, 3)
	for _, c := range []struct {
		s      search.Strategy
		cr     float64
		forced bool
	}{
		{StrategyEvolver, 0.5, false},
		{StrategyEvolver, 0.02, true},
		{search.Rand1Bin, 0.9, true},
		{search.Best1Bin, 1.0 / 16, true},
		{search.CurrentToBest1Bin, 0.001, false},
		{search.Rand1Bin, 0, true},
	} {
		t.Run(string(c.s), func(t *testing.T) {
			cfg := constCfg(c.s, 0.375, c.cr)
			cfg.ForceIndex = c.forced
			fit := []float64{0.1, 0.5, 0.3, math.NaN(), 0.2}
			tr, err := cfg.Plan(4, 2, fit, n)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]float32, n)
			taken, err := Offspring(tensor.FromF32(out), vecs(pop...), &cfg, &tr)
			if err != nil {
				t.Fatal(err)
			}
			m := maskRef(&cfg, &tr, n)
			var want int64
			for j := range n {
				exp := pop[2][j]
				if m[j] {
					exp = donorRef(c.s, pop, 2, tr.Refs, float32(tr.F), j)
					want++
				}
				if math.Float32bits(out[j]) != math.Float32bits(exp) {
					t.Fatalf("element %d: got %v, want %v (mask %v)", j, out[j], exp, m[j])
				}
			}
			if taken != want {
				t.Fatalf("taken %d, want %d", taken, want)
			}
		})
	}
}

func TestMaskRate(t *testing.T) {
	// Both samplers are Bernoulli(CR): the count is within 6 standard
	// deviations of n·CR (a false failure has probability < 1e-8).
	const n = 40 * parallel.Chunk
	pop := randomPop(2, n, 5)
	for _, cr := range []float64{0.001, 0.03, 0.0625, 0.5} {
		cfg := constCfg(StrategyEvolver, 0.5, cr)
		tr, err := cfg.Plan(0, 0, []float64{0, 1}, n)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]float32, n)
		taken, err := Offspring(tensor.FromF32(out), vecs(pop...), &cfg, &tr)
		if err != nil {
			t.Fatal(err)
		}
		mean, sd := n*cr, math.Sqrt(n*cr*(1-cr))
		if math.Abs(float64(taken)-mean) > 6*sd {
			t.Errorf("CR=%v: %d taken, want %.0f ± %.0f", cr, taken, mean, 6*sd)
		}
	}
}

func TestOffspringSegments(t *testing.T) {
	const n = parallel.Chunk + 5000
	pop := randomPop(4, n, 9)
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"tensor", Config{Granularity: Tensor, Segments: []int{0, 3, 100, parallel.Chunk + 10, n}}},
		{"block", Config{Granularity: Block, BlockSize: 1000}},
		{"block larger than n", Config{Granularity: Block, BlockSize: 10 * n}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.Strategy, cfg.Schedule, cfg.Generations, cfg.ForceIndex = search.Rand1Bin,
				search.ScheduleSpec{Kind: "constant", F: 0.5, CR: 0.5}, 3, true
			if err := cfg.Validate(n); err != nil {
				t.Fatal(err)
			}
			tr, err := cfg.Plan(1, 3, []float64{1, 2, 3, 4}, n)
			if err != nil {
				t.Fatal(err)
			}
			// Re-derive the segment mask: refs then BinomialMask on the trial stream.
			r := search.NewRNG(TrialKey(cfg.Seed, 1, 3))
			refs := make([]int, 3)
			search.PickDistinct(r, 4, 3, refs)
			wantMask := make([]bool, cfg.numSegments(n))
			search.BinomialMask(wantMask, 0.5, true, r)
			if !slices.Equal(refs, tr.Refs) || !slices.Equal(wantMask, tr.SegMask) {
				t.Fatalf("plan refs %v mask %v, want %v %v", tr.Refs, tr.SegMask, refs, wantMask)
			}
			out := make([]float32, n)
			taken, err := Offspring(tensor.FromF32(out), vecs(pop...), &cfg, &tr)
			if err != nil {
				t.Fatal(err)
			}
			var want int64
			for k, take := range wantMask {
				lo, hi := cfg.segment(k, n)
				for j := lo; j < hi; j++ {
					exp := pop[3][j]
					if take {
						exp = donorRef(cfg.Strategy, pop, 3, refs, 0.5, j)
					}
					if out[j] != exp {
						t.Fatalf("segment %d element %d: got %v, want %v", k, j, out[j], exp)
					}
				}
				if take {
					want += int64(hi - lo)
				}
			}
			if taken != want {
				t.Fatalf("taken %d, want %d", taken, want)
			}
		})
	}
}

func TestThreadCountInvariance(t *testing.T) {
	const n = 5*parallel.Chunk + 77
	pop := randomPop(4, n, 11)
	for _, g := range []Granularity{Element, Block} {
		for _, cr := range []float64{0.003, 0.7} {
			cfg := constCfg(search.CurrentToBest1Bin, 0.8, cr)
			cfg.Granularity, cfg.BlockSize, cfg.ForceIndex = g, 3000, true
			var ref []float32
			for _, th := range []int{1, 2, 3, 8} {
				cfg.Pool = parallel.Pool{Threads: th}
				tr, err := cfg.Plan(2, 1, []float64{4, 3, 2, 1}, n)
				if err != nil {
					t.Fatal(err)
				}
				out := make([]float32, n)
				if _, err := Offspring(tensor.FromF32(out), vecs(pop...), &cfg, &tr); err != nil {
					t.Fatal(err)
				}
				if ref == nil {
					ref = out
				} else if !slices.Equal(ref, out) {
					t.Fatalf("%s CR=%v: %d threads differ from 1 thread", g, cr, th)
				}
			}
		}
	}
}

func TestOffspring16Bit(t *testing.T) {
	const n = parallel.Chunk + 300
	pop := randomPop(3, n, 13)
	for _, d := range []tensor.DType{tensor.BF16, tensor.F16} {
		for _, cr := range []float64{0.01, 0.6} {
			vs := make([]tensor.Vec, len(pop))
			wide := make([][]float32, len(pop))
			for i, x := range pop {
				vs[i] = tensor.Alloc(n, d)
				vs[i].Store(x, 0)
				wide[i] = make([]float32, n)
				vs[i].Load(wide[i], 0)
			}
			cfg := constCfg(StrategyEvolver, 0.25, cr)
			tr, err := cfg.Plan(0, 1, []float64{0, 1, 2}, n)
			if err != nil {
				t.Fatal(err)
			}
			out := tensor.Alloc(n, d)
			if _, err := Offspring(out, vs, &cfg, &tr); err != nil {
				t.Fatal(err)
			}
			m := maskRef(&cfg, &tr, n)
			exp := make([]float32, n)
			for j := range n {
				exp[j] = wide[1][j]
				if m[j] {
					exp[j] = donorRef(StrategyEvolver, wide, 1, tr.Refs, 0.25, j)
				}
			}
			want := tensor.Alloc(n, d)
			want.Store(exp, 0)
			if !slices.Equal(out.U16, want.U16) {
				t.Fatalf("%v CR=%v: 16-bit offspring differs from the widened float32 computation", d, cr)
			}
		}
	}
}

// planRef re-derives a plan from Plan's documented draw order.
func planRef(cfg *Config, g, i int, fit []float64, n int) (refs []int, jrand int) {
	r := search.NewRNG(TrialKey(cfg.Seed, g, i))
	np := len(fit)
	jrand = -1
	bestOf := func(excl int) int {
		b := -1
		for j, v := range fit {
			if j == excl || math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			if b < 0 || v > fit[b] {
				b = j
			}
		}
		return b
	}
	switch cfg.Strategy {
	case StrategyEvolver:
		u := r.Float64()
		p := 0.5/float64(cfg.Generations-g) + 0.5
		if cfg.Generations-g <= 1 {
			p = 1
		}
		refs = make([]int, 1)
		if cfg.RandomRef || u < p {
			search.PickDistinct(r, np, i, refs)
		} else {
			refs[0] = bestOf(i)
		}
	case search.Rand1Bin:
		refs = make([]int, 3)
		search.PickDistinct(r, np, i, refs)
	default:
		refs = make([]int, 3)
		search.PickDistinct(r, np, i, refs[1:])
		refs[0] = bestOf(-1)
	}
	if cfg.ForceIndex {
		jrand = r.IntN(n)
	}
	return refs, jrand
}

func TestPlan(t *testing.T) {
	fit := []float64{0.3, math.Inf(1), 0.9, 0.9, math.NaN(), 0.1}
	for _, c := range []struct {
		name   string
		s      search.Strategy
		random bool
		forced bool
	}{
		{"evolver", StrategyEvolver, false, false},
		{"evolver with merger", StrategyEvolver, true, true},
		{"rand/1", search.Rand1Bin, false, true},
		{"best/1", search.Best1Bin, false, false},
		{"current-to-best/1", search.CurrentToBest1Bin, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := constCfg(c.s, 0.5, 0.5)
			cfg.Generations, cfg.RandomRef, cfg.ForceIndex = 1000, c.random, c.forced
			sawBest, sawRandom := false, false
			for g := 0; g < 40; g++ {
				for i := range fit {
					tr, err := cfg.Plan(g, i, fit, 100)
					if err != nil {
						t.Fatal(err)
					}
					refs, jr := planRef(&cfg, g, i, fit, 100)
					if !slices.Equal(tr.Refs, refs) || tr.JRand != jr {
						t.Fatalf("g=%d i=%d: refs %v j_rand %d, want %v %d", g, i, tr.Refs, tr.JRand, refs, jr)
					}
					random := tr.Refs
					if c.s == search.Best1Bin || c.s == search.CurrentToBest1Bin {
						random = tr.Refs[1:]
					}
					if slices.Contains(random, i) {
						t.Fatalf("g=%d i=%d: references %v include the target", g, i, tr.Refs)
					}
					if c.s == StrategyEvolver {
						bestOther := 2 // fitness 0.9, lowest index of the tie
						if i == 2 {
							bestOther = 3
						}
						if tr.Refs[0] == bestOther {
							sawBest = true
						} else {
							sawRandom = true
						}
					}
				}
			}
			if c.s == StrategyEvolver && (!sawRandom || (!c.random && !sawBest)) {
				t.Fatalf("references never random (%v) or never best (%v)", sawRandom, sawBest)
			}
		})
	}
}

func TestRefProbability(t *testing.T) {
	for _, c := range []struct {
		g, G int
		want float64
	}{
		{0, 10, 0.55}, {5, 10, 0.6}, {8, 10, 0.75}, {9, 10, 1}, {12, 10, 1}, {0, 1, 1},
	} {
		if got := RefProbability(c.g, c.G); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("p(%d, %d) = %v, want %v", c.g, c.G, got, c.want)
		}
	}
}

func TestParamsSchedules(t *testing.T) {
	cfg := Config{Strategy: StrategyEvolver, Generations: 10,
		Schedule: search.SpecOf(search.CADEWeightSpaceCosine())}
	for _, c := range []struct {
		g     int
		wantF float64
	}{
		{0, 1e-5}, {40, 1e-6}, {20, 5.5e-6}, {80, 1e-5},
	} {
		F, CR, err := cfg.Params(c.g)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(F-c.wantF) > 1e-18 || math.Abs(CR-c.wantF) > 1e-18 {
			t.Errorf("g=%d: F=%v CR=%v, want both %v", c.g, F, CR, c.wantF)
		}
	}
	cfg.Schedule = search.ScheduleSpec{Kind: "constant", F: 0.7, CR: 0.2}
	if F, CR, _ := cfg.Params(3); F != 0.7 || CR != 0.2 {
		t.Errorf("constant: F=%v CR=%v", F, CR)
	}
}

func TestOrder(t *testing.T) {
	if got := Order(1, 0, 5, false); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("unshuffled order %v", got)
	}
	for g := range 20 {
		got := Order(3, g, 7, true)
		want := []int{0, 1, 2, 3, 4, 5, 6}
		r := search.NewRNG(rng.Key(3, "npsfuse/evolve/order", g))
		for k := 6; k > 0; k-- {
			j := r.IntN(k + 1)
			want[k], want[j] = want[j], want[k]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("g=%d: order %v, want %v", g, got, want)
		}
	}
}

func TestErrors(t *testing.T) {
	good := func() Config { return constCfg(search.Rand1Bin, 0.5, 0.5) }
	pop := vecs(randomPop(4, 10, 1)...)
	for _, c := range []struct {
		name   string
		mutate func(*Config, *Trial, *[]tensor.Vec) tensor.Vec
		want   string
	}{
		{"unknown strategy", func(c *Config, _ *Trial, _ *[]tensor.Vec) tensor.Vec {
			c.Strategy = "rand/2/exp"
			return tensor.Alloc(10, tensor.F32)
		}, "unknown strategy"},
		{"population too small", func(_ *Config, _ *Trial, p *[]tensor.Vec) tensor.Vec {
			*p = (*p)[:3]
			return tensor.Alloc(10, tensor.F32)
		}, "at least 4"},
		{"length mismatch", func(_ *Config, _ *Trial, _ *[]tensor.Vec) tensor.Vec {
			return tensor.Alloc(9, tensor.F32)
		}, "elements"},
		{"dtype mismatch", func(_ *Config, _ *Trial, _ *[]tensor.Vec) tensor.Vec {
			return tensor.Alloc(10, tensor.BF16)
		}, "bfloat16"},
		{"offspring aliases an individual", func(_ *Config, _ *Trial, p *[]tensor.Vec) tensor.Vec {
			return (*p)[2]
		}, "overlaps individual 2"},
		{"reference out of range", func(_ *Config, tr *Trial, _ *[]tensor.Vec) tensor.Vec {
			tr.Refs[1] = 4
			return tensor.Alloc(10, tensor.F32)
		}, "reference 4"},
		{"CR above 1", func(_ *Config, tr *Trial, _ *[]tensor.Vec) tensor.Vec {
			tr.CR = 1.5
			return tensor.Alloc(10, tensor.F32)
		}, "CR in [0, 1]"},
		{"forced index out of range", func(_ *Config, tr *Trial, _ *[]tensor.Vec) tensor.Vec {
			tr.JRand = 10
			return tensor.Alloc(10, tensor.F32)
		}, "forced index"},
		{"segment mask length", func(c *Config, tr *Trial, _ *[]tensor.Vec) tensor.Vec {
			c.Granularity, c.BlockSize = Block, 3
			tr.SegMask = make([]bool, 3)
			return tensor.Alloc(10, tensor.F32)
		}, "segment mask"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := good()
			tr := Trial{Individual: 0, F: 0.5, CR: 0.5, Refs: []int{1, 2, 3}, JRand: -1}
			p := slices.Clone(pop)
			out := c.mutate(&cfg, &tr, &p)
			_, err := Offspring(out, p, &cfg, &tr)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrInput containing %q", err, c.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		n    int
		want string
	}{
		{"granularity", Config{Granularity: "row"}, 5, "unknown granularity"},
		{"block size", Config{Granularity: Block}, 5, "block_size"},
		{"segments start", Config{Granularity: Tensor, Segments: []int{1, 5}}, 5, "starting at 0"},
		{"segments increase", Config{Granularity: Tensor, Segments: []int{0, 3, 3, 5}}, 5, "strictly"},
		{"segments end", Config{Granularity: Tensor, Segments: []int{0, 3}}, 5, "end at 3"},
		{"generations", Config{Generations: -1}, 5, "generations"},
		{"schedule", Config{Schedule: search.ScheduleSpec{Kind: "cosine", FMin: 2, FMax: 1, T: 3}}, 5, "FMin <= FMax"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.Strategy = StrategyEvolver
			if cfg.Schedule.Kind == "" {
				cfg.Schedule = search.ScheduleSpec{Kind: "constant", F: 0.5, CR: 0.5}
			}
			if cfg.Generations == 0 {
				cfg.Generations = 4
			}
			err := cfg.Validate(c.n)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrInput containing %q", err, c.want)
			}
		})
	}
}

func TestDecodeConfig(t *testing.T) {
	c, err := DecodeConfig([]byte(`{"strategy":"rand/1/bin","schedule":{"kind":"cosine","f_min":1e-6,"f_max":1e-5,"cr_min":1e-6,"cr_max":1e-5,"t":40},"granularity":"tensor","segments":[0,4,9],"force_index":false,"seed":3,"generations":12}`), 9)
	if err != nil {
		t.Fatal(err)
	}
	if c.Strategy != search.Rand1Bin || c.Schedule.T != 40 || c.Generations != 12 || !slices.Equal(c.Segments, []int{0, 4, 9}) || c.Seed != 3 {
		t.Fatalf("decoded %+v", c)
	}
	for _, bad := range []string{`{"strategy":"evolver","generations":1,"schedule":{"kind":"constant"},"extra":1}`, `{"strategy":"evolver"} {}`, `[]`} {
		if _, err := DecodeConfig([]byte(bad), 5); !errors.Is(err, ErrInput) {
			t.Errorf("%s: error %v, want ErrInput", bad, err)
		}
	}
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"strategy":"evolver","schedule":{"kind":"constant","f":0.5,"cr":0.5},"generations":3}`), 10)
	f.Add([]byte(`{"strategy":"rand/1/bin","schedule":{"kind":"cosine","f_min":0.1,"f_max":0.9,"cr_min":0.1,"cr_max":0.9,"t":5},"granularity":"tensor","segments":[0,5,10],"generations":3}`), 10)
	f.Add([]byte(`{"strategy":"best/1/bin","schedule":{"kind":"constant","f":0.5,"cr":0.01},"granularity":"block","block_size":3,"force_index":true,"generations":2}`), 7)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		n = n % 4096
		if n < 0 {
			n = -n
		}
		c, err := DecodeConfig(data, n)
		if err != nil {
			if !errors.Is(err, ErrInput) {
				t.Fatalf("error %v does not wrap ErrInput", err)
			}
			return
		}
		// A valid config must plan and run without panicking.
		np := 4
		fit := []float64{1, 2, 3, 4}
		tr, err := c.Plan(1, 2, fit, n)
		if err != nil {
			t.Fatalf("valid config fails to plan: %v", err)
		}
		pop := make([]tensor.Vec, np)
		for i := range pop {
			pop[i] = tensor.Alloc(n, tensor.F32)
		}
		if _, err := Offspring(tensor.Alloc(n, tensor.F32), pop, &c, &tr); err != nil {
			t.Fatalf("valid plan fails: %v", err)
		}
	})
}
