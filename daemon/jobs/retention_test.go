package jobs

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/daemon/store"
)

// TestRetention covers issue 16 Low 14: finished jobs and their result
// files are removed by age, count and bytes, oldest first; unfinished
// jobs are never touched; idle sessions expire.
func TestRetention(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 2, 3)
	cfg := map[string]any{"merge_method": "task_arithmetic", "base_model": paths[0],
		"models": []any{map[string]any{"model": paths[1]}, map[string]any{"model": paths[2]}}}
	var ids []uint64
	var files []string
	for i := 0; i < 4; i++ {
		j := submit(t, f, "merge", map[string]any{"config": cfg, "result": map[string]any{"shm": i%2 == 0}})
		st := f.wait(t, j.ID)
		if st.State != store.Done {
			t.Fatalf("job %d: %s %s", j.ID, st.State, st.Error)
		}
		p, err := f.r.ResultPath(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids, files = append(ids, j.ID), append(files, p)
	}
	one, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	exists := func() (n int) {
		for i, id := range ids {
			_, errJob := f.st.Get(id)
			_, errFile := os.Stat(files[i])
			if (errJob == nil) != (errFile == nil) {
				t.Fatalf("job %d: record %v but result file %v", id, errJob, errFile)
			}
			if errJob == nil {
				n++
			}
		}
		return n
	}
	now := time.Now()
	// A session stays open: it is not finished, so never removed by count.
	sess := submit(t, f, "nps_search", map[string]any{"base": paths[0], "model": paths[1], "subspaces": 2, "seed": 1, "popsize": 4})
	if _, err := f.r.WaitSession(context.Background(), sess.ID, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name  string
		p     Retention
		at    time.Time
		left  int
		jobs  int
		bytes int64
	}{
		{"nothing is old yet", Retention{MaxAge: time.Hour}, now, 4, 0, 0},
		{"count keeps the 3 newest", Retention{MaxJobs: 3}, now, 3, 1, one.Size()},
		{"bytes keep 2 results", Retention{MaxResultBytes: 2 * one.Size()}, now, 2, 1, one.Size()},
		{"age removes the rest", Retention{MaxAge: time.Hour}, now.Add(2 * time.Hour), 0, 2, 2 * one.Size()},
	}
	for _, s := range steps {
		got, err := f.r.Sweep(s.at, s.p)
		if err != nil {
			t.Fatal(err)
		}
		if n := exists(); n != s.left || got.Jobs != s.jobs || got.Bytes != s.bytes || got.Sessions != 0 {
			t.Fatalf("%s: %d jobs left (want %d), swept %+v (want %d jobs, %d bytes)", s.name, n, s.left, got, s.jobs, s.bytes)
		}
		// The oldest go first.
		for i, id := range ids {
			if _, err := f.st.Get(id); (err == nil) != (i >= len(ids)-s.left) {
				t.Fatalf("%s: job %d (submitted %d.) kept: %v", s.name, id, i+1, err == nil)
			}
		}
	}
	if _, err := f.r.Status(sess.ID); err != nil {
		t.Fatalf("the open session was removed: %v", err)
	}
	// Idle sessions: used just now, so not idle; an hour later, expired.
	if got, _ := f.r.Sweep(time.Now(), Retention{SessionIdle: time.Hour}); got.Sessions != 0 {
		t.Fatalf("a session used just now expired")
	}
	got, err := f.r.Sweep(time.Now().Add(2*time.Hour), Retention{SessionIdle: time.Hour})
	if err != nil || got.Sessions != 1 {
		t.Fatalf("idle session not expired: %+v %v", got, err)
	}
	st, err := f.r.Status(sess.ID)
	if err != nil || st.State != store.Cancelled || !strings.Contains(st.Error, "session_idle_timeout") {
		t.Fatalf("expired session: %+v %v", st, err)
	}
	if _, err := f.r.Session(sess.ID); err == nil {
		t.Fatal("an expired session still answers")
	}
}
