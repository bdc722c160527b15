package session

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

func TestGuardRefusesCallsOnceClosed(t *testing.T) {
	own := errors.New("mine: session closed")
	for _, tc := range []struct {
		name string
		g    *Guard
		want error
	}{
		{"default error", &Guard{}, ErrClosed},
		{"door's error", &Guard{Closed: own}, own},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v, err := Do(tc.g, func() (int, error) { return 7, nil }); v != 7 || err != nil {
				t.Fatalf("open: Do = %v, %v", v, err)
			}
			freed := 0
			tc.g.Close(func() { freed++ })
			tc.g.Close(func() { freed++ })
			if freed != 1 {
				t.Errorf("free ran %d times, want once", freed)
			}
			ran := false
			if _, err := Do(tc.g, func() (int, error) { ran = true; return 0, nil }); !errors.Is(err, tc.want) || ran {
				t.Errorf("closed: Do ran=%v err=%v, want %v without running", ran, err, tc.want)
			}
			if rel, err := tc.g.Hold(); rel != nil || !errors.Is(err, tc.want) {
				t.Errorf("closed: Hold = %v, %v", rel != nil, err)
			}
		})
	}
	if !fault.Is(ErrClosed, fault.FailedPrecondition) {
		t.Errorf("ErrClosed is %v, want failed_precondition", fault.KindOf(ErrClosed))
	}
}

func TestGuardHoldBlocksCallsAndCloseUntilReleased(t *testing.T) {
	var g Guard
	release, err := g.Hold()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = Do(&g, func() (int, error) { note("call"); return 0, nil })
	}()
	go func() {
		defer wg.Done()
		time.Sleep(5 * time.Millisecond) // after the call queued, usually; either order is valid
		g.Close(func() { note("close") })
	}()
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	early := len(order)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("%v ran while the result was held", order)
	}
	note("release")
	release()
	release() // idempotent: a second release must not unlock twice
	wg.Wait()
	if order[0] != "release" || len(order) < 2 || order[len(order)-1] == "release" {
		t.Errorf("order %v, want release first", order)
	}
}
