package search

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

func TestFactoryRoundTrip(t *testing.T) {
	lo, hi := []float64{0, -1}, []float64{2, 1}
	cosine := ScheduleSpec{Kind: "cosine", FMin: 0.1, FMax: 0.9, CRMin: 0.2, CRMax: 0.8, T: 3, Jitter: true}
	for _, c := range []Config{
		{Optimizer: "cma", X0: []float64{1, 0}, Lo: lo, Hi: hi, Seed: 3},
		{Optimizer: "de", X0: []float64{1, 0}, Lo: lo, Hi: hi, Seed: 3, Popsize: 5},
		{Optimizer: "de", Lo: lo, Hi: hi, Seed: 3, Popsize: 5, Strategy: "best/1/bin", Schedule: &cosine},
	} {
		t.Run(fmt.Sprint(c.Optimizer, c.Strategy), func(t *testing.T) {
			a, err := New(c)
			if err != nil {
				t.Fatal(err)
			}
			f := func(x []float64) float64 { return -(x[0]-1.5)*(x[0]-1.5) - x[1]*x[1] }
			step := func(o Optimizer) string {
				xs := o.Ask()
				fs := make([]float64, len(xs))
				for i, x := range xs {
					fs[i] = f(x)
				}
				if err := o.Tell(fs); err != nil {
					t.Fatal(err)
				}
				return fmt.Sprint(xs)
			}
			step(a)
			a.Ask() // saved with a pending batch
			st, err := Save(a)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(st)
			var back State
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatal(err)
			}
			b, err := Restore(back)
			if err != nil {
				t.Fatal(err)
			}
			for g := 0; g < 4; g++ {
				if x, y := step(a), step(b); x != y {
					t.Fatalf("generation %d: restored optimizer asks %s, the original %s", g, y, x)
				}
			}
			if c.Schedule != nil {
				if got := b.(*DE).State().Schedule; got != *c.Schedule {
					t.Fatalf("restored schedule %+v, want %+v (it travels inside DEState)", got, *c.Schedule)
				}
			}
		})
	}
}

func TestFactoryErrors(t *testing.T) {
	for _, c := range []Config{
		{Optimizer: "adam", X0: []float64{1}},
		{Optimizer: "de", X0: []float64{1}},
		{Optimizer: "cma", X0: []float64{1}, Sigma0: -1},
		{Optimizer: "de", Lo: []float64{0}, Hi: []float64{1}, Schedule: &ScheduleSpec{Kind: "cosine", T: 0}},
	} {
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", c, err)
		}
	}
	for _, s := range []State{{}, {Optimizer: "cma"}, {Optimizer: "de", CMA: &CMAESState{}}, {Optimizer: "cma", CMA: &CMAESState{}}} {
		if _, err := Restore(s); !errors.Is(err, ErrConfig) {
			t.Errorf("Restore(%+v) = %v, want ErrConfig", s, err)
		}
	}
	if _, err := Save(nil); err == nil {
		t.Error("Save(nil) succeeded")
	}
}
