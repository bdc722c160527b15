package pybind

import (
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/search"
)

// TestHandleHelpers: the one helper behind every handle call returns JSON,
// refuses freed and foreign handles, and turns a panic into an error.
func TestHandleHelpers(t *testing.T) {
	h, err := OptNew(`{"optimizer": "cma", "x0": [1, 1], "lo": [0, 0], "hi": [2, 2], "popsize": 4}`)
	if err != nil {
		t.Fatal(err)
	}
	defer Free(h)
	other := putHandle(42)
	defer Free(other)
	tests := []struct {
		name    string
		h       int
		f       func(search.Optimizer) (any, error)
		want    string // the JSON, or a part of the error
		wantErr bool
	}{
		{"json", h, func(o search.Optimizer) (any, error) { return map[string]int{"n": len(o.Ask())}, nil }, `{"n":4}`, false},
		{"nil result", h, func(search.Optimizer) (any, error) { return nil, nil }, "", false},
		{"error", h, func(search.Optimizer) (any, error) { return nil, search.ErrConfig }, "invalid search input", true},
		{"panic", h, func(search.Optimizer) (any, error) { panic("boom") }, "internal error (Go panic): boom", true},
		{"foreign handle", other, nil, "invalid handle", true},
		{"unknown handle", -1, nil, "invalid handle", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := withHandle(tc.h, tc.f)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %q, %v; want an error with %q", out, err, tc.want)
				}
				return
			}
			if err != nil || out != tc.want {
				t.Fatalf("got %q, %v; want %q", out, err, tc.want)
			}
		})
	}
	before := NumHandlesLive()
	for config, want := range map[string]string{
		`{"optimizer": "cma", "x0": [1], "bogus": 1}`:                `optimizer config: unknown field "bogus"`,
		`{"optimizer": "nelder-mead", "x0": [1]}`:                    `unknown optimizer "nelder-mead" (want "cma" or "de")`,
		`{"optimizer": "cma", "x0": [1], "sigma0": 1, "popsize": 1}`: "Popsize must be >= 2",
	} {
		_, err := OptNew(config)
		if err == nil || !strings.HasPrefix(err.Error(), errorTag+fault.InvalidInput.String()+errorTag) || !strings.Contains(err.Error(), want) {
			t.Errorf("OptNew(%s) = %v, want an invalid-input error with %q", config, err, want)
		}
	}
	if n := NumHandlesLive(); n != before {
		t.Errorf("%d handles after failed creations, want %d", n, before)
	}
}
