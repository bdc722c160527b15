package jobs

import (
	"encoding/json"
	"testing"
)

// BenchmarkSubmit measures Submit of a small merge (validation and the
// store commit, fsync off) with the workers running the jobs meanwhile.
func BenchmarkSubmit(b *testing.B) {
	t := &testing.T{}
	f := newFixture(t, 2)
	defer f.stop()
	paths, _, _ := f.family(t, 1, 1)
	spec, _ := json.Marshal(map[string]any{"config": map[string]any{"merge_method": "task_arithmetic", "base_model": paths[0],
		"models": []any{map[string]any{"model": paths[1]}}}, "result": map[string]any{"shm": true}})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := f.r.Submit("merge", spec, ""); err != nil {
			b.Fatal(err)
		}
	}
}
