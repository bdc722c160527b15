package store

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

// BenchmarkSubmitSync measures Submit throughput with fsync on, from 1 and
// 16 goroutines (group commit lets concurrent submits share a sync).
func BenchmarkSubmitSync(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "jobs.db"), true)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			spec := json.RawMessage(`{"config":{"merge_method":"ties"}}`)
			b.ResetTimer()
			var wg sync.WaitGroup
			per := (b.N + clients - 1) / clients
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < per; i++ {
						if _, _, err := s.Submit(&Job{Type: "merge", Spec: spec}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
