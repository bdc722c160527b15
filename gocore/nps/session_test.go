package nps

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/search"
)

// sessionCases are every optimizer and DE strategy the NPS search accepts.
var sessionCases = []struct {
	name string
	cfg  search.Config
}{
	{"cma", search.Config{Optimizer: "cma"}},
	{"cma-sigma0", search.Config{Optimizer: "cma", Sigma0: 0.2, Popsize: 5}},
	{"de-constant", search.Config{Optimizer: "de", Popsize: 6, Schedule: &search.ScheduleSpec{Kind: "constant", F: 0.6, CR: 0.7}}},
	{"de-cade-default", search.Config{Optimizer: "de", Popsize: 6}},
	{"de-cosine-jitter", search.Config{Optimizer: "de", Popsize: 6, Schedule: &search.ScheduleSpec{Kind: "cosine", FMin: 0.2, FMax: 0.8, CRMin: 0.1, CRMax: 0.9, T: 3, Jitter: true}}},
	{"de-best1bin", search.Config{Optimizer: "de", Popsize: 5, Strategy: "best/1/bin"}},
	{"de-current-to-best", search.Config{Optimizer: "de", Popsize: 5, Strategy: "current-to-best/1/bin"}},
}

func newTestSession(t *testing.T, cfg search.Config, gens int) *Session {
	t.Helper()
	cfg.Lo, cfg.Hi, cfg.Seed = []float64{0, 0, 0}, []float64{2, 2, 2}, 5
	s, err := NewSession(SessionConfig{Config: cfg, Start: []float64{1, 1, 1}, Generations: gens})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// quad is the test's score: closeness to (1.4, 0.6, 0.3); the candidate
// at index 2 of every generation fails.
func quad(x []float64, i int) float64 {
	if i == 2 {
		return math.NaN()
	}
	return -((x[0]-1.4)*(x[0]-1.4) + (x[1]-0.6)*(x[1]-0.6) + (x[2]-0.3)*(x[2]-0.3))
}

// run drives s to Done; with roundTrip it saves and restores the session
// after every Ask and every Tell. It returns every asked batch and the
// final JSON.
func run(t *testing.T, s *Session, roundTrip bool) ([][][]float64, string) {
	t.Helper()
	again := func() {
		if !roundTrip {
			return
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if s, err = RestoreSession(b); err != nil {
			t.Fatal(err)
		}
	}
	var asked [][][]float64
	for !s.Done() {
		pts := s.Ask()
		again()
		if fmt.Sprint(s.Ask()) != fmt.Sprint(pts) {
			t.Fatal("asking again gives other candidates")
		}
		asked = append(asked, pts)
		scores := make([]float64, len(pts))
		for i, x := range pts {
			scores[i] = quad(x, i)
		}
		if err := s.Tell(scores); err != nil {
			t.Fatal(err)
		}
		again()
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return asked, string(b)
}

func TestSessionResumeIsBitIdentical(t *testing.T) {
	for _, c := range sessionCases {
		t.Run(c.name, func(t *testing.T) {
			a1, j1 := run(t, newTestSession(t, c.cfg, 4), false)
			a2, j2 := run(t, newTestSession(t, c.cfg, 4), true)
			if fmt.Sprint(a1) != fmt.Sprint(a2) || j1 != j2 {
				t.Fatalf("a session saved and restored at every step differs:\n%s\n%s", j1, j2)
			}
			if len(a1) != 5 || len(a1[0]) != 1 {
				t.Fatalf("asked %d batches (first of %d), want the start alone then 4 generations", len(a1), len(a1[0]))
			}
			// A different seed gives a different run: the test can fail.
			st := newTestSession(t, c.cfg, 4).Config()
			st.Seed = 6
			s3, err := NewSession(st)
			if err != nil {
				t.Fatal(err)
			}
			a3, _ := run(t, s3, false)
			if fmt.Sprint(a3) == fmt.Sprint(a1) {
				t.Fatal("another seed gives the same run")
			}
		})
	}
}

func TestSessionBookkeeping(t *testing.T) {
	s := newTestSession(t, search.Config{Optimizer: "cma", Popsize: 4}, 2)
	if err := s.Tell([]float64{1}); !errors.Is(err, ErrNotAsked) {
		t.Fatalf("tell before ask: %v", err)
	}
	if pts := s.Ask(); len(pts) != 1 || fmt.Sprint(pts[0]) != "[1 1 1]" {
		t.Fatalf("first ask %v, want the start alone", pts)
	}
	if err := s.Tell([]float64{1, 2}); !errors.Is(err, search.ErrConfig) {
		t.Fatalf("two scores for one candidate: %v", err)
	}
	if err := s.Tell([]float64{0.5}); err != nil {
		t.Fatal(err)
	}
	if f, ok := s.StartScore(); !ok || f != 0.5 || s.Generation() != 0 || s.Done() {
		t.Fatalf("start %v %v, generation %d", f, ok, s.Generation())
	}
	pts := s.Ask()
	if len(pts) != 4 {
		t.Fatalf("%d candidates, want popsize 4", len(pts))
	}
	if err := s.Tell([]float64{math.NaN(), 0.5, math.Inf(1), 0.25}); err != nil {
		t.Fatal(err)
	}
	x, f := s.Best()
	if f != 0.5 || fmt.Sprint(x) != "[1 1 1]" {
		t.Fatalf("best %v %v: a tie must keep the start", x, f)
	}
	h := s.History()
	if len(h) != 1 || h[0].Failed != 2 || *h[0].Best != 0.5 || *h[0].Mean != 0.375 || *h[0].BestSoFar != 0.5 ||
		fmt.Sprint(h[0].X) != fmt.Sprint(pts[1]) {
		t.Fatalf("history %+v", h[0])
	}
	if s.Evals() != 5 || s.Failures() != 2 {
		t.Fatalf("evals %d failures %d", s.Evals(), s.Failures())
	}
	if sm := s.Summary(); !sm.Started || sm.Pending || sm.Generation != 1 || sm.Done || sm.Evals != 5 || sm.Failures != 2 ||
		sm.StartF == nil || *sm.StartF != 0.5 || sm.BestF != 0.5 || len(sm.History) != 1 {
		t.Fatalf("summary %+v", sm)
	}
	pts = s.Ask()
	if err := s.Tell([]float64{0.1, 0.9, 0.2, 0.3}); err != nil {
		t.Fatal(err)
	}
	if x, f := s.Best(); f != 0.9 || fmt.Sprint(x) != fmt.Sprint(pts[1]) || !s.Done() {
		t.Fatalf("best %v %v, done %v", x, f, s.Done())
	}
}

func TestSessionMinimizeAndStartOutsideBox(t *testing.T) {
	s, err := NewSession(SessionConfig{Config: search.Config{Optimizer: "de", Lo: []float64{0, 0}, Hi: []float64{0.5, 0.5}, Popsize: 4, Minimize: true},
		Start: []float64{1, 1}, Generations: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Config()
	if fmt.Sprint(c.X0) != "[0.5 0.5]" || c.Schedule == nil || c.Schedule.Kind != "cosine" || c.Schedule.T != 1 {
		t.Fatalf("x0 %v schedule %+v: want the start clipped and CADE's default cosine", c.X0, c.Schedule)
	}
	s.Ask()
	if err := s.Tell([]float64{3}); err != nil {
		t.Fatal(err)
	}
	pts := s.Ask()
	if fmt.Sprint(pts[0]) != "[0.5 0.5]" {
		t.Fatalf("DE's individual 0 is %v, want the clipped start", pts[0])
	}
	if err := s.Tell([]float64{4, 2, math.NaN(), 5}); err != nil {
		t.Fatal(err)
	}
	if _, f := s.Best(); f != 2 {
		t.Fatalf("best %v, want the lowest score 2", f)
	}
}

func TestSessionBadConfigAndState(t *testing.T) {
	for _, c := range []SessionConfig{
		{Config: search.Config{Optimizer: "sgd"}, Start: []float64{1}},
		{Config: search.Config{Optimizer: "cma", Lo: []float64{0}, Hi: []float64{2}}},
		{Config: search.Config{Optimizer: "de"}, Start: []float64{1}},
		{Config: search.Config{Optimizer: "cma", Lo: []float64{0}, Hi: []float64{2}}, Start: []float64{math.NaN()}},
	} {
		if _, err := NewSession(c); !errors.Is(err, search.ErrConfig) {
			t.Errorf("%+v: %v, want a config error", c, err)
		}
	}
	for _, st := range []string{`{}`, `{"version": 1}`, `not json`, `{"version": 1, "config": {"start": [1], "x0": [1]}, "optimizer": {"optimizer": "de"}}`} {
		if _, err := RestoreSession([]byte(st)); !errors.Is(err, search.ErrConfig) {
			t.Errorf("%s: %v, want a config error", st, err)
		}
	}
}

func TestSessionStartInPopulation(t *testing.T) {
	c := SessionConfig{Config: search.Config{Optimizer: "de", Lo: []float64{0, 0}, Hi: []float64{2, 2}, Popsize: 4, Seed: 1},
		Start: []float64{1, 3}, Generations: 2, StartInPopulation: true}
	s, err := NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	pts := s.Ask()
	if len(pts) != 4 || fmt.Sprint(pts[0]) != "[1 2]" {
		t.Fatalf("first ask %v: want the DE's population with the clipped start first", pts)
	}
	if err := s.Tell([]float64{0.5, 0.1, 0.2, 0.3}); err != nil {
		t.Fatal(err)
	}
	if f, ok := s.StartScore(); !ok || f != 0.5 || s.Generation() != 1 {
		t.Fatalf("start %v %v generation %d: the initial population is generation 1, its first score the start's", f, ok, s.Generation())
	}
	c.Optimizer = "cma"
	if _, err := NewSession(c); !errors.Is(err, search.ErrConfig) {
		t.Fatalf("start_in_population with CMA-ES: %v", err)
	}
}
