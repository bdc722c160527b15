package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCanTransition(t *testing.T) {
	allowed := map[[2]State]bool{
		{Queued, Queued}: true, {Queued, Running}: true, {Queued, Cancelled}: true, {Queued, Failed}: true,
		{Running, Running}: true, {Running, Done}: true, {Running, Failed}: true, {Running, Cancelled}: true, {Running, Queued}: true,
	}
	for _, from := range States {
		for _, to := range States {
			if got := CanTransition(from, to); got != allowed[[2]State{from, to}] {
				t.Errorf("CanTransition(%s, %s) = %v", from, to, got)
			}
		}
	}
}

func TestSubmitIdempotent(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "jobs.db"))
	defer s.Close()
	spec := json.RawMessage(`{"a":1}`)
	j1, existed, err := s.Submit(&Job{Type: "merge", Spec: spec, Key: "k1"})
	if err != nil || existed || j1.ID != 1 || j1.State != Queued {
		t.Fatalf("first submit: %+v existed=%v err=%v", j1, existed, err)
	}
	j2, existed, err := s.Submit(&Job{Type: "merge", Spec: spec, Key: "k1"})
	if err != nil || !existed || j2.ID != j1.ID {
		t.Fatalf("retried submit: %+v existed=%v err=%v", j2, existed, err)
	}
	if _, _, err := s.Submit(&Job{Type: "merge", Spec: json.RawMessage(`{"a":2}`), Key: "k1"}); !errors.Is(err, ErrKeyReused) {
		t.Fatalf("same key, other spec: %v, want ErrKeyReused", err)
	}
	j3, existed, err := s.Submit(&Job{Type: "merge", Spec: spec})
	if err != nil || existed || j3.ID != 2 {
		t.Fatalf("keyless submit: %+v %v %v", j3, existed, err)
	}
	if byKey, err := s.ByKey("k1"); err != nil || byKey.ID != 1 {
		t.Errorf("ByKey: %+v %v", byKey, err)
	}
	if c := s.Counts(); c[Queued] != 2 {
		t.Errorf("counts %v, want 2 queued", c)
	}
}

func TestUpdate(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "jobs.db"))
	defer s.Close()
	j, _, _ := s.Submit(&Job{Type: "merge", Spec: json.RawMessage(`{}`)})
	if _, err := s.Update(j.ID, func(j *Job) error { j.State = Done; return nil }); !errors.Is(err, ErrTransition) {
		t.Fatalf("queued → done: %v, want ErrTransition", err)
	}
	r, err := s.Update(j.ID, func(j *Job) error { j.State = Running; j.Attempts++; return nil })
	if err != nil || r.Started == nil || r.Finished != nil || r.Attempts != 1 {
		t.Fatalf("→ running: %+v %v", r, err)
	}
	boom := errors.New("boom")
	if _, err := s.Update(j.ID, func(j *Job) error { j.State = Done; return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error: %v", err)
	}
	if g, _ := s.Get(j.ID); g.State != Running {
		t.Fatalf("a failed update changed the state to %s", g.State)
	}
	r, err = s.Update(j.ID, func(j *Job) error {
		j.State = Done
		j.Result = json.RawMessage(`{"x":1}`)
		j.Type = "other"
		return nil
	})
	if err != nil || r.Finished == nil || r.Type != "merge" || string(r.Result) != `{"x":1}` {
		t.Fatalf("→ done: %+v %v (the type must not change)", r, err)
	}
	if _, err := s.Update(j.ID, func(j *Job) error { j.State = Queued; return nil }); !errors.Is(err, ErrTransition) {
		t.Fatalf("done → queued: %v", err)
	}
	if _, err := s.Update(99, func(*Job) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown job: %v", err)
	}
	if c := s.Counts(); c[Done] != 1 || c[Queued] != 0 || c[Running] != 0 {
		t.Errorf("counts %v", c)
	}
	if err := s.Delete(j.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(j.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted job still there: %v", err)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	s := open(t, path)
	for i := 0; i < 3; i++ {
		if _, _, err := s.Submit(&Job{Type: "merge", Spec: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), Key: fmt.Sprint("k", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Update(2, func(j *Job) error { j.State = Running; j.Checkpoint = json.RawMessage(`{"g":7}`); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	if c := s.Counts(); c[Queued] != 2 || c[Running] != 1 {
		t.Fatalf("counts after reopen %v", c)
	}
	running, err := s.List(Filter{States: []State{Running}})
	if err != nil || len(running) != 1 || string(running[0].Checkpoint) != `{"g":7}` {
		t.Fatalf("running after reopen: %+v %v", running, err)
	}
	if j, existed, err := s.Submit(&Job{Type: "merge", Spec: json.RawMessage(`{"i":0}`), Key: "k0"}); err != nil || !existed || j.ID != 1 {
		t.Fatalf("idempotency after reopen: %+v %v %v", j, existed, err)
	}
	if j, _, _ := s.Submit(&Job{Type: "merge", Spec: json.RawMessage(`{}`)}); j.ID != 4 {
		t.Errorf("next id %d, want 4", j.ID)
	}
	page, _ := s.List(Filter{After: 1, Limit: 2})
	if len(page) != 2 || page[0].ID != 2 || page[1].ID != 3 {
		t.Errorf("List(after 1, limit 2) = %d jobs", len(page))
	}
}

func TestConcurrentSubmits(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "jobs.db"))
	defer s.Close()
	const clients, each = 50, 20
	var wg sync.WaitGroup
	ids := make(chan uint64, clients*each)
	errs := make(chan error, clients*each)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				// Every submit is sent twice: the retry must not create a job.
				for r := 0; r < 2; r++ {
					j, existed, err := s.Submit(&Job{Type: "merge", Spec: json.RawMessage(`{}`), Key: fmt.Sprintf("c%d-%d", c, i)})
					if err != nil {
						errs <- err
						return
					}
					if r == 0 && !existed {
						ids <- j.ID
					}
				}
			}
		}()
	}
	wg.Wait()
	close(ids)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("id %d given twice", id)
		}
		seen[id] = true
	}
	if len(seen) != clients*each || s.Counts()[Queued] != clients*each {
		t.Errorf("%d distinct jobs, counts %v; want %d", len(seen), s.Counts(), clients*each)
	}
}

func TestSecondOpenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	s := open(t, path)
	defer s.Close()
	if _, err := Open(path, false); err == nil {
		t.Error("a second Open of a store in use succeeded")
	}
}

func TestSubmitMany(t *testing.T) {
	spec := func(a int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"a":%d}`, a)) }
	cases := []struct {
		name    string
		before  []*Job // submitted first, one by one
		batch   []*Job
		wantErr error
		ids     []uint64
		existed []bool
		queued  int // queued jobs in the store afterwards
	}{
		{name: "all new", batch: []*Job{{Type: "merge", Spec: spec(1)}, {Type: "merge", Spec: spec(2), Key: "a"}, {Type: "evolve", Spec: spec(3)}},
			ids: []uint64{1, 2, 3}, existed: []bool{false, false, false}, queued: 3},
		{name: "key seen before", before: []*Job{{Type: "merge", Spec: spec(1), Key: "k"}},
			batch: []*Job{{Type: "merge", Spec: spec(2)}, {Type: "merge", Spec: spec(1), Key: "k"}},
			ids:   []uint64{2, 1}, existed: []bool{false, true}, queued: 2},
		{name: "same key twice in the batch", batch: []*Job{{Type: "merge", Spec: spec(1), Key: "k"}, {Type: "merge", Spec: spec(1), Key: "k"}},
			ids: []uint64{1, 1}, existed: []bool{false, true}, queued: 1},
		{name: "key reused: none stored", before: []*Job{{Type: "merge", Spec: spec(1), Key: "k"}},
			batch:   []*Job{{Type: "merge", Spec: spec(5)}, {Type: "merge", Spec: spec(2), Key: "k"}},
			wantErr: ErrKeyReused, queued: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := open(t, filepath.Join(t.TempDir(), "jobs.db"))
			defer s.Close()
			for _, j := range c.before {
				if _, _, err := s.Submit(j); err != nil {
					t.Fatal(err)
				}
			}
			got, existed, err := s.SubmitMany(c.batch)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err %v, want %v", err, c.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				for i, j := range got {
					if j.ID != c.ids[i] || existed[i] != c.existed[i] || j.State != Queued {
						t.Errorf("jobs[%d]: id %d existed %v state %s, want id %d existed %v", i, j.ID, existed[i], j.State, c.ids[i], c.existed[i])
					}
				}
			}
			if n := s.Counts()[Queued]; n != c.queued {
				t.Errorf("counts: %d queued, want %d", n, c.queued)
			}
			if l, _ := s.List(Filter{}); len(l) != c.queued {
				t.Errorf("%d jobs stored, want %d", len(l), c.queued)
			}
		})
	}
}
