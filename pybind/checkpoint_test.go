package pybind

import (
	"context"
	"testing"
	"time"
)

func TestStallForTestsIsOffUnlessAPositiveCount(t *testing.T) {
	for _, v := range []string{"", "x", "0", "-3", "1.5", "2:", "2:x", "2:-1", "2:NaN", ":1"} {
		if f := stallForTests(context.Background(), v); f != nil {
			t.Errorf("NPSFUSE_TEST_STALL_AFTER=%q: got a stall", v)
		}
	}
}

func TestStallForTestsWaitsAtItsTensorUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := stallForTests(ctx, "2")
	if f == nil {
		t.Fatal("NPSFUSE_TEST_STALL_AFTER=2: no stall")
	}
	f(1, 5) // not its tensor: returns at once
	returned := make(chan struct{})
	go func() { f(2, 5); close(returned) }()
	select {
	case <-returned:
		t.Fatal("the stall returned before the cancel")
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("the stall outlived the cancel")
	}
}

func TestStallForTestsEndsAfterItsSeconds(t *testing.T) {
	f := stallForTests(context.Background(), "1:0.05")
	if f == nil {
		t.Fatal("NPSFUSE_TEST_STALL_AFTER=1:0.05: no stall")
	}
	returned := make(chan struct{})
	go func() { f(1, 3); close(returned) }()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("a 0.05 s stall did not end")
	}
}
