package search

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"testing"
)

// TestDEBenchmarks: minimisation to f < 1e-8 within the stated evaluation
// budget (about twice the largest count seen over seeds 1–5 for f < 1e-10),
// for every seed 1–3. NP = 10n, bounds [−5, 5]ⁿ, clip repair.
//   - rand/1/bin with F = 0.5, CR = 0.9 on the sphere;
//   - current-to-best/1/bin and best/1/bin (F = 0.5, CR = 0.9) on the
//     sphere; best/1/bin converges prematurely at n = 16 and is not required
//     there;
//   - Rosenbrock with rand/1/bin needs F = 0.7: with F = 0.5 and NP = 10n it
//     stagnates at n = 4 (a coordinate loses all diversity), as an
//     independent reference implementation does too;
//   - Rastrigin with rand/1/bin and CR = 0: with the forced index each trial
//     changes exactly one coordinate, which exploits separability.
func TestDEBenchmarks(t *testing.T) {
	type cfg struct {
		name     string
		f        func([]float64) float64
		strategy Strategy
		sched    Constant
		budgets  map[int]int // n → budget
	}
	for _, c := range []cfg{
		{"sphere", sphere, Rand1Bin, Constant{0.5, 0.9}, map[int]int{2: 2000, 4: 8000, 8: 36000, 16: 180000}},
		{"sphere", sphere, CurrentToBest1Bin, Constant{0.5, 0.9}, map[int]int{2: 1500, 4: 4200, 8: 12000, 16: 32000}},
		{"sphere", sphere, Best1Bin, Constant{0.5, 0.9}, map[int]int{2: 1000, 4: 3000, 8: 8000}},
		{"rosenbrock", rosenbrock, Rand1Bin, Constant{0.7, 0.9}, map[int]int{2: 4000, 4: 20000, 8: 140000, 16: 1400000}},
		{"rastrigin", rastrigin, Rand1Bin, Constant{0.5, 0}, map[int]int{2: 3200, 4: 12000, 8: 46000, 16: 200000}},
	} {
		for _, n := range []int{2, 4, 8, 16} {
			budget, ok := c.budgets[n]
			if !ok {
				continue
			}
			for seed := uint64(1); seed <= 3; seed++ {
				lo, hi := box(n, -5, 5)
				d, err := NewDE(DEOptions{Lo: lo, Hi: hi, Strategy: c.strategy, Schedule: c.sched, Minimize: true, Seed: seed})
				if err != nil {
					t.Fatal(err)
				}
				if d.Popsize() != 10*n {
					t.Fatalf("default popsize %d, want %d", d.Popsize(), 10*n)
				}
				if best, evals := runUntil(d, c.f, 1e-8, budget); best >= 1e-8 {
					t.Errorf("%s %s n=%d seed %d: f=%.3g after %d evals (budget %d)", c.name, c.strategy, n, seed, best, evals, budget)
				}
			}
		}
	}
}

// TestDECosineRastrigin: rand/1/bin with DefaultCosine(G) (F and CR
// 0.9 → 0.1 over the run), NP = 10n, exactly G trial generations. Required:
// f < 1e-8 for n <= 8; for n = 16 the looser f < 1e-3 (inside the global
// basin; the nearest local minima have f ≈ 1), seeds 1–3.
func TestDECosineRastrigin(t *testing.T) {
	for _, c := range []struct {
		n, g int
		tol  float64
	}{{2, 300, 1e-8}, {4, 300, 1e-8}, {8, 1000, 1e-8}, {16, 1000, 1e-3}} {
		for seed := uint64(1); seed <= 3; seed++ {
			lo, hi := box(c.n, -5, 5)
			d, err := NewDE(DEOptions{Lo: lo, Hi: hi, Schedule: DefaultCosine(c.g), Minimize: true, Seed: seed})
			if err != nil {
				t.Fatal(err)
			}
			best, _ := runUntil(d, rastrigin, math.Inf(-1), 10*c.n*(c.g+1))
			if d.Generation() != c.g || best >= c.tol {
				t.Errorf("n=%d seed %d: f=%.3g after %d generations, want < %g after %d", c.n, seed, best, d.Generation(), c.tol, c.g)
			}
			if f, cr := d.LastParams(); math.Abs(f-0.1) > 0.01 || math.Abs(cr-0.1) > 0.01 {
				t.Errorf("last F, CR = %v, %v; want ≈ 0.1 at the end of the half cycle", f, cr)
			}
		}
	}
}

// TestDESelectionNeverWorse is a property test: over random populations and
// random trial fitness including NaN and ±Inf, no slot's fitness ever gets
// worse; ties replace the parent unless Strict; a failed trial never
// replaces a successful parent.
func TestDESelectionNeverWorse(t *testing.T) {
	r := NewRNG(123)
	values := func() float64 {
		switch r.IntN(8) {
		case 0:
			return math.NaN()
		case 1:
			return math.Inf(1)
		case 2:
			return math.Inf(-1)
		case 3:
			return 1 // frequent ties
		}
		return r.NormFloat64()
	}
	for trial := range 400 {
		minimize, strict := trial%2 == 0, trial%4 >= 2
		np, n := 4+r.IntN(6), 1+r.IntN(4)
		pop := make([][]float64, np)
		fit := make([]float64, np)
		for i := range pop {
			pop[i] = []float64{r.NormFloat64()}
			for range n - 1 {
				pop[i] = append(pop[i], r.NormFloat64())
			}
			fit[i] = values()
		}
		d, err := NewDE(DEOptions{Population: pop, Fitness: fit, Minimize: minimize, Strict: strict, Seed: uint64(trial)})
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			before, beforeFit := d.Population()
			trials := d.Ask()
			tf := make([]float64, np)
			for i := range tf {
				tf[i] = values()
			}
			if err := d.Tell(tf); err != nil {
				t.Fatal(err)
			}
			after, afterFit := d.Population()
			for i := range after {
				sb, sa, st := score(beforeFit[i], minimize), score(afterFit[i], minimize), score(tf[i], minimize)
				if sa < sb {
					t.Fatalf("slot %d got worse: %v -> %v", i, beforeFit[i], afterFit[i])
				}
				replaced := slices.Equal(after[i], trials[i]) && (afterFit[i] == tf[i] || (math.IsNaN(afterFit[i]) && math.IsNaN(tf[i])))
				kept := slices.Equal(after[i], before[i])
				wantReplace := st > sb || (!strict && st == sb)
				if wantReplace && !replaced || !wantReplace && !kept {
					t.Fatalf("slot %d (strict=%v minimize=%v): parent %v trial %v, replaced=%v", i, strict, minimize, beforeFit[i], tf[i], replaced)
				}
			}
		}
	}
}

// TestDETrialConstruction rebuilds the first trial batch from the exported
// operators and the documented RNG draw order, bit for bit.
func TestDETrialConstruction(t *testing.T) {
	for _, c := range []struct {
		s      Strategy
		k      int
		forced bool
		repair Repair
		jitter bool
	}{
		{Rand1Bin, 3, true, RepairModeClip, false},
		{Best1Bin, 2, false, RepairModeReflect, true},
		{CurrentToBest1Bin, 2, true, RepairModeReflect, true},
	} {
		lo, hi := box(5, -1, 1)
		sched := Cosine{FMin: 0.4, FMax: 1.6, CRMin: 0.3, CRMax: 0.8, T: 5, Jitter: c.jitter}
		opt := DEOptions{Lo: lo, Hi: hi, X0: fill(5, 0.25), Popsize: 7, Strategy: c.s, Schedule: sched,
			NoForcedIndex: !c.forced, Repair: c.repair, Seed: 99}
		d, err := NewDE(opt)
		if err != nil {
			t.Fatal(err)
		}
		// Initial population: X0, then uniform draws individual by individual.
		twin := NewRNG(99)
		pop := d.Ask()
		if !slices.Equal(pop[0], fill(5, 0.25)) {
			t.Fatalf("individual 0 is not X0: %v", pop[0])
		}
		for i := 1; i < 7; i++ {
			for j := range 5 {
				if want := -1 + 2*twin.Float64(); pop[i][j] != want {
					t.Fatalf("initial x[%d][%d] = %v, want %v", i, j, pop[i][j], want)
				}
			}
		}
		fit := make([]float64, 7)
		for i, x := range pop {
			fit[i] = -sphere(x)
		}
		if err := d.Tell(fit); err != nil || d.Generation() != 0 {
			t.Fatalf("initial Tell: %v, generation %d", err, d.Generation())
		}
		best := 0
		for i := range fit {
			if fit[i] > fit[best] {
				best = i
			}
		}
		F, CR := sched.Params(0, twin)
		r := make([]int, c.k)
		mask := make([]bool, 5)
		got := d.Ask()
		for i := range 7 {
			PickDistinct(twin, 7, i, r)
			v := make([]float64, 5)
			mutate(v, c.s, pop, i, best, r, F)
			BinomialMask(mask, CR, c.forced, twin)
			Crossover(v, pop[i], v, mask)
			if c.repair == RepairModeClip {
				RepairClip(v, lo, hi)
			} else {
				RepairReflect(v, lo, hi)
			}
			if !slices.Equal(got[i], v) {
				t.Fatalf("%s trial %d: got %v, want %v", c.s, i, got[i], v)
			}
		}
		if twin.State() != d.State().RNG {
			t.Fatalf("%s: RNG consumed differently", c.s)
		}
		if f, cr := d.LastParams(); f != F || cr != math.Min(CR, 1) {
			t.Fatalf("LastParams %v %v, want %v %v", f, cr, F, CR)
		}
	}
}

func TestDEInitialPopulationOptions(t *testing.T) {
	lo, hi := box(3, 0, 1)
	d, err := NewDE(DEOptions{Lo: lo, Hi: hi, Popsize: 50, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range d.Ask() {
		if err := checkInside(x, lo, hi, "x"); err != nil {
			t.Fatal(err)
		}
	}
	// A given population with fitness: the first Ask already returns trials.
	pop := [][]float64{{0, 0}, {1, 1}, {2, 2}, {3, 3}}
	d, err = NewDE(DEOptions{Population: pop, Fitness: []float64{4, 3, 2, 1}, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	pop[0][0] = 99 // NewDE copied
	trials := d.Ask()
	if g, _ := d.Population(); g[0][0] != 0 || slices.EqualFunc(trials, g, slices.Equal) {
		t.Errorf("population not copied, or first Ask did not return trials")
	}
	if x, f := d.Best(); f != 4 || !slices.Equal(x, []float64{0, 0}) {
		t.Errorf("Best = %v, %v; want [0 0], 4 (maximising)", x, f)
	}
	// A given population without fitness is evaluated first.
	d, _ = NewDE(DEOptions{Population: [][]float64{{0}, {1}, {2}, {3}}, Seed: 3})
	if x, f := d.Best(); x != nil || !math.IsInf(f, -1) {
		t.Errorf("Best before evaluation: %v %v", x, f)
	}
	if first := d.Ask(); !slices.EqualFunc(first, [][]float64{{0}, {1}, {2}, {3}}, slices.Equal) {
		t.Errorf("first Ask %v is not the population", first)
	}
}

func TestDEProtocolAndErrors(t *testing.T) {
	lo, hi := box(2, -1, 1)
	d, _ := NewDE(DEOptions{Lo: lo, Hi: hi, Popsize: 5, Seed: 1})
	if err := d.Tell([]float64{1}); err == nil {
		t.Error("accepted a wrong number of initial values")
	}
	_ = d.Tell(make([]float64, 5))
	if err := d.Tell(make([]float64, 5)); !errors.Is(err, ErrNoPending) {
		t.Errorf("Tell without Ask: %v", err)
	}
	a1 := d.Ask()
	a1[0][0] = 42
	if a2 := d.Ask(); a2[0][0] == 42 {
		t.Error("Ask leaks internal slices")
	}
	if err := d.Tell(make([]float64, 4)); err == nil {
		t.Error("accepted a wrong number of trial values")
	}
	if err := d.Tell(make([]float64, 5)); err != nil || d.Generation() != 1 || d.Evals() != 10 {
		t.Errorf("Tell: %v gen %d evals %d", err, d.Generation(), d.Evals())
	}
	for _, bad := range []DEOptions{
		{},
		{Lo: lo, Hi: hi, Popsize: 3}, // rand/1 needs 4
		{Lo: lo, Hi: hi, Popsize: 2, Strategy: Best1Bin},          // needs 3
		{Lo: lo, Hi: hi, Strategy: "rand/2/exp"},                  // unknown
		{Lo: lo, Hi: hi, Repair: "wrap"},                          // unknown
		{Lo: lo, Hi: hi, Schedule: Constant{F: 0.5, CR: 2}},       // CR > 1
		{Lo: lo, Hi: hi, Schedule: Cosine{FMax: 1, CRMax: 1}},     // T = 0
		{Lo: lo, Hi: hi, X0: []float64{2, 0}},                     // X0 outside
		{X0: []float64{0, 0}},                                     // drawn population without bounds
		{Population: [][]float64{{0}, {1}, {2}, {3}}, Popsize: 4}, // Population excludes Popsize
		{Population: [][]float64{{0}, {1}, {2}, {3}}, Fitness: []float64{1}},
		{Population: [][]float64{{0}, {1}, {2}, {3, 4}}},
		{Lo: lo, Hi: hi, Fitness: []float64{1}},
	} {
		if _, err := NewDE(bad); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// badSchedule returns a non-finite F, which Tell must report.
type badSchedule struct{}

func (badSchedule) Params(int, *RNG) (float64, float64) { return math.NaN(), 0.5 }

func TestDECustomSchedule(t *testing.T) {
	d, _ := NewDE(DEOptions{Population: [][]float64{{0}, {1}, {2}, {3}}, Fitness: []float64{0, 1, 2, 3}, Schedule: badSchedule{}})
	d.Ask()
	if err := d.Tell(make([]float64, 4)); err == nil {
		t.Error("non-finite F not reported")
	}
	if d.State().Schedule.Kind != "custom" {
		t.Error("custom schedule not recorded as custom")
	}
	if _, err := RestoreDE(d.State(), nil); err == nil {
		t.Error("restored a custom schedule without the schedule")
	}
	if _, err := RestoreDE(d.State(), Constant{F: 0.5, CR: 0.5}); err != nil {
		t.Errorf("restore with an explicit schedule: %v", err)
	}
}

func stepDE(t *testing.T, d *DE, f func([]float64) float64) [][]float64 {
	t.Helper()
	xs := d.Ask()
	fs := make([]float64, len(xs))
	for k, x := range xs {
		fs[k] = f(x)
	}
	fs[(d.Generation()*3)%len(fs)] = math.NaN()
	if err := d.Tell(fs); err != nil {
		t.Fatal(err)
	}
	return xs
}

// TestDEResume: a search resumed from a JSON round trip of State() — before
// the initial evaluation, after a Tell or between Ask and Tell — continues
// bit for bit like the uninterrupted one (including a jittered schedule).
func TestDEResume(t *testing.T) {
	for _, c := range []struct {
		warm   int
		midAsk bool
	}{{0, false}, {0, true}, {12, false}, {12, true}} {
		lo, hi := box(4, -5, 5)
		opt := DEOptions{Lo: lo, Hi: hi, X0: fill(4, 1), Strategy: CurrentToBest1Bin, Repair: RepairModeReflect,
			Schedule: Cosine{FMin: 0.2, FMax: 0.6, CRMin: 0.1, CRMax: 0.9, T: 7, Jitter: true}, Minimize: true, Seed: 31}
		ref, _ := NewDE(opt)
		run, _ := NewDE(opt)
		for range c.warm {
			stepDE(t, ref, rastrigin)
			stepDE(t, run, rastrigin)
		}
		if c.midAsk {
			ref.Ask()
			run.Ask()
		}
		var st DEState
		if err := json.Unmarshal(stateJSON(t, run.State()), &st); err != nil {
			t.Fatal(err)
		}
		res, err := RestoreDE(st, nil)
		if err != nil {
			t.Fatal(err)
		}
		for g := range 30 {
			xr, xs := stepDE(t, ref, rastrigin), stepDE(t, res, rastrigin)
			if !slices.EqualFunc(xr, xs, slices.Equal) {
				t.Fatalf("%+v: generation %d differs", c, g)
			}
		}
		if a, b := stateJSON(t, ref.State()), stateJSON(t, res.State()); string(a) != string(b) {
			t.Fatalf("%+v: final states differ", c)
		}
	}
}

// TestDEMaximizeMirrorsMinimize: maximising −f and minimising f are the same
// search, bit for bit.
func TestDEMaximizeMirrorsMinimize(t *testing.T) {
	lo, hi := box(3, -5, 5)
	a, _ := NewDE(DEOptions{Lo: lo, Hi: hi, Strategy: Best1Bin, Seed: 4})
	b, _ := NewDE(DEOptions{Lo: lo, Hi: hi, Strategy: Best1Bin, Seed: 4, Minimize: true})
	for g := range 40 {
		xa, xb := a.Ask(), b.Ask()
		if !slices.EqualFunc(xa, xb, slices.Equal) {
			t.Fatalf("generation %d differs", g)
		}
		fa, fb := make([]float64, len(xa)), make([]float64, len(xb))
		for k := range xa {
			fb[k] = rosenbrock(xb[k])
			fa[k] = -fb[k]
		}
		if err := errors.Join(a.Tell(fa), b.Tell(fb)); err != nil {
			t.Fatal(err)
		}
	}
	xa, fa := a.Best()
	xb, fb := b.Best()
	if !slices.Equal(xa, xb) || fa != -fb {
		t.Errorf("best differ: %v %v / %v %v", xa, fa, xb, fb)
	}
}

func FuzzRestoreDE(f *testing.F) {
	lo, hi := box(2, 0, 2)
	d, _ := NewDE(DEOptions{Lo: lo, Hi: hi, Popsize: 4, Schedule: DefaultCosine(10), Seed: 4})
	b, _ := json.Marshal(d.State())
	f.Add(b)
	_ = d.Tell([]float64{1, math.NaN(), 3, math.Inf(-1)})
	d.Ask()
	b, _ = json.Marshal(d.State())
	f.Add(b)
	f.Add([]byte(`{"version":1,"n":1,"strategy":"best/1/bin","schedule":{"kind":"constant","f":0.5,"cr":0.5},"repair":"clip","population":[[0],[1],[2]],"fitness":[1,"NaN",2],"last_f":0,"last_cr":0,"rng":"0000000000000001000000000000000000000000000000000000000000000000"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var st DEState
		if json.Unmarshal(data, &st) != nil {
			return
		}
		d, err := RestoreDE(st, nil)
		if err != nil {
			return
		}
		for range 2 {
			xs := d.Ask()
			if len(xs) != len(st.Population) {
				t.Fatalf("Ask returned %d points, want %d", len(xs), len(st.Population))
			}
			fs := make([]float64, len(xs))
			for k, x := range xs {
				fs[k] = sphere(x)
			}
			if d.Tell(fs) != nil {
				return // e.g. an absurd schedule overflowing F; must not panic
			}
		}
	})
}
