package evolve

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// testDoor is a door as npsfuse.Evolver and the daemon are: it holds the
// population, builds the trials the session plans and applies its
// outcomes. Its "model" is a vector, the merge of a population (Merger)
// its mean.
type testDoor struct {
	t      *testing.T
	cfg    SessionConfig
	pop    [][]float32
	held   map[int][]float32
	target []float32
	// rebuild makes apply recompute replacements from their trials (the
	// daemon's way) instead of reusing the vectors it scored (Evolver's).
	rebuild bool
}

func newTestDoor(t *testing.T, c SessionConfig, rebuild bool) *testDoor {
	target := make([]float32, c.N)
	for j := range target {
		target[j] = 0.25
	}
	return &testDoor{t: t, cfg: c, pop: randomPop(c.Population, c.N, 99), held: map[int][]float32{}, target: target, rebuild: rebuild}
}

func (d *testDoor) build(c Candidate) []float32 {
	d.t.Helper()
	out := make([]float32, d.cfg.N)
	if _, err := Offspring(tensor.FromF32(out), vecs(d.pop...), &d.cfg.Config, c.Trial); err != nil {
		d.t.Fatal(err)
	}
	return out
}

// score is the closeness of the first 8 elements to the target (a few, so
// that random trials are accepted now and then, merged ones too).
func (d *testDoor) score(x []float32) float64 {
	s := 0.0
	for j, v := range x[:8] {
		e := float64(v - d.target[j])
		s -= e * e
	}
	return s
}

// evaluate scores a candidate and returns the vector it built.
func (d *testDoor) evaluate(c Candidate) (float64, []float32) {
	var x []float32
	switch {
	case c.Trial != nil:
		x = d.build(c)
	case c.Individual >= 0:
		return d.score(d.pop[c.Individual]), nil
	}
	if !c.Merge {
		return d.score(x), x
	}
	mean := make([]float32, d.cfg.N)
	for k, p := range d.pop {
		if c.Trial != nil && k == c.Individual {
			p = x
		}
		for j, v := range p {
			mean[j] += v / float32(len(d.pop))
		}
	}
	return d.score(mean), x
}

// apply applies an outcome; x is the told candidate's vector (nil in Replay).
func (d *testDoor) apply(o Outcome, i int, x []float32) error {
	if o.Keep {
		d.held[i] = x
	}
	next := make([][]float32, len(o.Replace))
	for k, r := range o.Replace {
		switch h, ok := d.held[r.Individual]; {
		case d.rebuild || x == nil:
			next[k] = d.build(r)
		case ok:
			next[k] = h
		default:
			next[k] = x
		}
	}
	for k, r := range o.Replace {
		d.pop[r.Individual] = next[k]
		delete(d.held, r.Individual)
	}
	return nil
}

// step asks, scores the first candidate and tells its score.
func (d *testDoor) step(s *Session) Outcome {
	d.t.Helper()
	cands, err := s.Ask()
	if err != nil || len(cands) == 0 {
		d.t.Fatalf("ask: %v, %d candidates", err, len(cands))
	}
	score, x := d.evaluate(cands[0])
	o, err := s.Tell(score)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := d.apply(o, cands[0].Individual, x); err != nil {
		d.t.Fatal(err)
	}
	return o
}

func sessionCfg(s search.Strategy, merger bool, sched search.ScheduleSpec) SessionConfig {
	return SessionConfig{Config: Config{Strategy: s, Schedule: sched, Seed: 11, Generations: 4, ForceIndex: s != StrategyEvolver},
		Population: 5, N: 300, Merger: merger}
}

var (
	constant = search.ScheduleSpec{Kind: "constant", F: 0.5, CR: 0.5}
	cosine   = search.ScheduleSpec{Kind: "cosine", FMin: 0.1, FMax: 0.9, CRMin: 0.2, CRMax: 0.6, T: 3}
)

var sessionCases = []struct {
	name   string
	s      search.Strategy
	merger bool
	sched  search.ScheduleSpec
	rule   Replacement
}{
	{"evolver", StrategyEvolver, false, constant, Immediate},
	{"evolver with merger", StrategyEvolver, true, constant, Immediate},
	{"rand/1/bin", search.Rand1Bin, false, cosine, Generational},
	{"rand/1/bin with merger", search.Rand1Bin, true, constant, Immediate},
	{"best/1/bin", search.Best1Bin, false, constant, Generational},
	{"current-to-best/1/bin", search.CurrentToBest1Bin, false, cosine, Generational},
}

// run drives a whole session; it returns the final state's JSON and the
// population.
func run(t *testing.T, c SessionConfig, rebuild bool) ([]byte, [][]float32) {
	s, err := NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDoor(t, s.Config(), rebuild)
	for !s.Done() {
		d.step(s)
	}
	b, _ := json.Marshal(s)
	return b, d.pop
}

func TestSessionDeterminismAndRules(t *testing.T) {
	for _, c := range sessionCases {
		t.Run(c.name, func(t *testing.T) {
			cfg := sessionCfg(c.s, c.merger, c.sched)
			if got := cfg.Replacement(); got != c.rule {
				t.Fatalf("replacement %s, want %s", got, c.rule)
			}
			a, popA := run(t, cfg, false)
			b, popB := run(t, cfg, true) // trials rebuilt from the outcomes
			if string(a) != string(b) || fmt.Sprint(popA) != fmt.Sprint(popB) {
				t.Fatal("the same seed gave different runs (or replacements rebuilt from trials differ)")
			}
			cfg.Seed++
			other, _ := run(t, cfg, false)
			if string(other) == string(a) {
				t.Fatal("another seed gave the same run")
			}
			var st sessionState
			if err := json.Unmarshal(a, &st); err != nil {
				t.Fatal(err)
			}
			init := cfg.Population
			if c.merger {
				init = 1
			}
			if len(st.History) != 5 || len(st.Scores) != init+4*cfg.Population || st.Phase != PhaseDone {
				t.Fatalf("history %d records, %d scores, phase %s", len(st.History), len(st.Scores), st.Phase)
			}
			accepted := 0
			for g, r := range st.History {
				if r.Generation != g {
					t.Errorf("record %d is generation %d", g, r.Generation)
				}
				if g > 0 && r.Best < st.History[g-1].Best {
					t.Errorf("best fell from %v to %v at generation %d", st.History[g-1].Best, r.Best, g)
				}
				accepted += r.Accepted
			}
			if accepted == 0 {
				t.Error("no trial was ever accepted")
			}
		})
	}
}

func TestSessionSchedule(t *testing.T) {
	for _, sched := range []search.ScheduleSpec{constant, cosine, search.SpecOf(search.CADEWeightSpaceCosine())} {
		cfg := sessionCfg(search.Rand1Bin, false, sched)
		cfg.Generations = 7
		b, _ := run(t, cfg, false)
		var st sessionState
		_ = json.Unmarshal(b, &st)
		if st.History[0].F != nil || st.History[0].CR != nil {
			t.Errorf("%s: generation 0 has F/CR", sched.Kind)
		}
		for g := 0; g < 7; g++ {
			wantF, wantCR := sched.F, sched.CR
			if sched.Kind == "cosine" {
				c := 0.5 * (1 + math.Cos(math.Pi*float64(g%(2*sched.T))/float64(sched.T)))
				wantF, wantCR = sched.FMin+(sched.FMax-sched.FMin)*c, sched.CRMin+(sched.CRMax-sched.CRMin)*c
			}
			r := st.History[g+1]
			if math.Abs(*r.F-wantF) > 1e-15*wantF || math.Abs(*r.CR-wantCR) > 1e-15*wantCR {
				t.Errorf("%s g=%d: F=%v CR=%v, want %v %v", sched.Kind, g, *r.F, *r.CR, wantF, wantCR)
			}
		}
	}
}

// TestSessionReplacement checks both rules on hand-chosen scores.
func TestSessionReplacement(t *testing.T) {
	t.Run("generational", func(t *testing.T) {
		s, _ := NewSession(sessionCfg(search.Best1Bin, false, constant))
		for i := range 5 {
			_, _ = s.Tell(float64(i)) // initial fitness 0…4: individual 4 is best
		}
		cands, _ := s.Ask()
		if len(cands) != 5 {
			t.Fatalf("a generational generation asks all 5 trials at once, got %d", len(cands))
		}
		for i, c := range cands {
			if c.Individual != i || c.Trial.Refs[0] != 4 {
				t.Fatalf("trial %d: parent %d, best reference %d", i, c.Individual, c.Trial.Refs[0])
			}
		}
		scores := []float64{10, -1, 2, math.NaN(), 3} // 0 accepted, 1 not, 2 tie (kept), 3 failed, 4 below
		for k, v := range scores {
			o, err := s.Tell(v)
			if err != nil {
				t.Fatal(err)
			}
			if k == 0 && (!o.Accepted || !o.Keep || len(o.Replace) != 0) {
				t.Fatalf("an accepted trial waits for the generation's end: %+v", o)
			}
			if k > 0 && k < 4 && (o.Accepted || o.Keep || len(o.Replace) != 0) {
				t.Fatalf("trial %d (score %v): %+v", k, v, o)
			}
			if k < 4 && s.Fitness()[0] != 0 {
				t.Fatal("fitness changed before the generation ended")
			}
			if k == 4 && (len(o.Replace) != 1 || o.Replace[0].Individual != 0 || o.Replace[0].Trial.Refs[0] != 4) {
				t.Fatalf("generation end: %+v", o)
			}
		}
		if fmt.Sprint(s.Fitness()) != "[10 1 2 3 4]" || s.Generation() != 1 {
			t.Fatalf("fitness %v after generation %d", s.Fitness(), s.Generation())
		}
		if i, f := s.Best(); i != 0 || f != 10 {
			t.Fatalf("best %d %v", i, f)
		}
		cands, _ = s.Ask()
		if cands[0].Trial.Refs[0] != 0 {
			t.Fatal("the next generation does not see the new best")
		}
	})
	t.Run("immediate", func(t *testing.T) {
		s, _ := NewSession(sessionCfg(StrategyEvolver, false, constant))
		for i := range 5 {
			_, _ = s.Tell(float64(i))
		}
		order := Order(11, 0, 5, true)
		for k, i := range order {
			cands, _ := s.Ask()
			if len(cands) != 1 || cands[0].Individual != i {
				t.Fatalf("trial %d: %+v, want parent %d", k, cands, i)
			}
			score := float64(i) - 1 // worse
			if k == 1 {
				score = 100
			}
			o, _ := s.Tell(score)
			if (k == 1) != o.Accepted || (k == 1) != (len(o.Replace) == 1) || o.Keep {
				t.Fatalf("trial %d: %+v", k, o)
			}
			if k == 1 && s.Fitness()[i] != 100 {
				t.Fatal("an accepted trial did not replace its parent at once")
			}
		}
	})
	t.Run("merger", func(t *testing.T) {
		s, _ := NewSession(sessionCfg(search.Rand1Bin, true, constant))
		cands, _ := s.Ask()
		if len(cands) != 1 || !cands[0].Merge || cands[0].Individual != -1 {
			t.Fatalf("initial merge: %+v", cands)
		}
		_, _ = s.Tell(1)
		for k, v := range []float64{0.5, 2, 2} { // worse, better, tie
			cands, _ = s.Ask()
			o, _ := s.Tell(v)
			want := []float64{1, 2, 2}[k]
			if !cands[0].Merge || cands[0].Trial == nil || o.Accepted != (k == 1) || s.MergeScore() != want {
				t.Fatalf("trial %d: %+v → %+v, merge score %v", k, cands, o, s.MergeScore())
			}
		}
		if i, f := s.Best(); i != -1 || f != 2 {
			t.Fatalf("best %d %v", i, f)
		}
	})
}

// TestSessionRoundTrip saves and restores the session after every tell:
// the run continues exactly, and Replay of the told scores rebuilds both
// the state and the population.
func TestSessionRoundTrip(t *testing.T) {
	for _, c := range sessionCases {
		t.Run(c.name, func(t *testing.T) {
			cfg := sessionCfg(c.s, c.merger, c.sched)
			want, wantPop := run(t, cfg, false)
			s, _ := NewSession(cfg)
			d := newTestDoor(t, s.Config(), false)
			for !s.Done() {
				d.step(s)
				b, err := json.Marshal(s)
				if err != nil {
					t.Fatal(err)
				}
				if s, err = Restore(b); err != nil {
					t.Fatal(err)
				}
				again, _ := json.Marshal(s)
				if string(again) != string(b) {
					t.Fatalf("the JSON round trip changed the state:\n%s\n%s", b, again)
				}
				// A door that restores mid-generation rebuilds the held trials.
				for _, i := range s.Held() {
					tr, err := s.Trial(i)
					if err != nil {
						t.Fatal(err)
					}
					d.held[i] = d.build(Candidate{Individual: i, Trial: &tr})
				}
			}
			got, _ := json.Marshal(s)
			if string(got) != string(want) || fmt.Sprint(d.pop) != fmt.Sprint(wantPop) {
				t.Fatal("the restored run continued differently")
			}
			fresh := newTestDoor(t, s.Config(), true)
			r, err := Replay(s.Config(), s.Scores(), func(o Outcome) error { return fresh.apply(o, -1, nil) })
			if err != nil {
				t.Fatal(err)
			}
			replayed, _ := json.Marshal(r)
			if string(replayed) != string(want) || fmt.Sprint(fresh.pop) != fmt.Sprint(wantPop) {
				t.Fatal("Replay does not rebuild the run")
			}
		})
	}
}

func TestSessionErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*SessionConfig)
		want string
	}{
		{"small population", func(c *SessionConfig) { c.Strategy, c.Population = search.Rand1Bin, 3 }, "at least 4"},
		{"merger and best", func(c *SessionConfig) { c.Strategy, c.Merger = search.Best1Bin, true }, "per-individual"},
		{"no elements", func(c *SessionConfig) { c.N = 0 }, "n = 0"},
		{"strategy", func(c *SessionConfig) { c.Strategy = "rand/2/bin" }, "unknown strategy"},
		{"generations", func(c *SessionConfig) { c.Generations = 0 }, "generations"},
	} {
		cfg := sessionCfg(StrategyEvolver, false, constant)
		c.edit(&cfg)
		_, err := NewSession(cfg)
		if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an input error with %q", c.name, err, c.want)
		}
	}
	s, _ := NewSession(sessionCfg(StrategyEvolver, false, constant))
	if _, err := s.Trial(0); !errors.Is(err, ErrInput) {
		t.Errorf("a trial during the initial evaluation: %v", err)
	}
	good, _ := json.Marshal(s)
	for _, bad := range []string{
		strings.Replace(string(good), `"phase":"init"`, `"phase":"later"`, 1),
		strings.Replace(string(good), `"population":5`, `"population":6`, 1),
		strings.Replace(string(good), `"told":[]`, `"told":[1,2,3,4,5]`, 1),
		strings.Replace(string(good), `"held":[]`, `"held":[0]`, 1),
		string(good) + "{}",
		strings.Replace(string(good), `"phase"`, `"stage"`, 1),
	} {
		if _, err := Restore([]byte(bad)); !errors.Is(err, ErrInput) {
			t.Errorf("Restore(%.80s…) = %v, want an input error", bad, err)
		}
	}
	for !s.Done() {
		_, _ = s.Tell(1)
	}
	if _, err := s.Tell(1); !errors.Is(err, ErrInput) {
		t.Errorf("tell after the end: %v", err)
	}
	if c, _ := s.Ask(); len(c) != 0 || !slices.Equal(s.Held(), []int{}) {
		t.Errorf("a finished session asks %v", c)
	}
}
