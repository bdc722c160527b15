package jobs

import (
	"context"
	"fmt"
	"sync"

	"github.com/npsfuse/npsfuse/daemon/config"
)

// Budget is the working memory jobs may hold at once (config
// memory_budget). A job reserves its estimate before it allocates and
// waits while others hold too much; a job larger than the whole budget
// fails at once instead of waiting forever.
//
// Shared-memory result files live in RAM (tmpfs) after their job ended,
// until the client releases them: Hold keeps their bytes counted until
// Drop.
type Budget struct {
	mu    sync.Mutex
	total int64
	used  int64
	held  map[string]int64 // result file → bytes, counted in used
	wake  chan struct{}    // closed and replaced on every release
}

// NewBudget returns a budget of total bytes.
func NewBudget(total int64) *Budget {
	return &Budget{total: total, held: map[string]int64{}, wake: make(chan struct{})}
}

// Hold counts n bytes under key (a shared-memory result file) until
// Drop(key). It does not wait: the job that wrote the file reserved its
// bytes, and releases that reservation after holding them here.
func (b *Budget) Hold(key string, n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used += n - b.held[key]
	b.held[key] = n
}

// Drop stops counting key's bytes (the file was released or deleted).
func (b *Budget) Drop(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.held[key]; ok {
		delete(b.held, key)
		b.used -= n
		close(b.wake)
		b.wake = make(chan struct{})
	}
}

// Reserve waits until n bytes fit and takes them; the returned function
// gives them back (call it once). It fails when n exceeds the whole budget
// (ErrTooLarge) or ctx ends first.
func (b *Budget) Reserve(ctx context.Context, n int64, what string) (func(), error) {
	if n <= 0 {
		return func() {}, nil
	}
	if n > b.total {
		return nil, fmt.Errorf("%w: %s needs about %s of working memory; memory_budget is %s",
			ErrTooLarge, what, config.FormatSize(n), config.FormatSize(b.total))
	}
	for {
		b.mu.Lock()
		if b.used+n <= b.total {
			b.used += n
			b.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					b.mu.Lock()
					b.used -= n
					close(b.wake)
					b.wake = make(chan struct{})
					b.mu.Unlock()
				})
			}, nil
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// Used is the memory currently reserved.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
