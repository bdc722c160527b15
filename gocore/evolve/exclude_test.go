package evolve

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

// excludeCases are the shared cases of testdata/exclude.json (the Python
// side, tests/test_exclude_rule.py, checks re.search against the same file).
type excludeCases struct {
	Cases []struct {
		Patterns []string `json:"patterns"`
		Name     string   `json:"name"`
		Excluded bool     `json:"excluded"`
	} `json:"cases"`
	Bad []string `json:"bad"`
}

func TestExcludeAgreesWithSharedCases(t *testing.T) {
	b, err := os.ReadFile("testdata/exclude.json")
	if err != nil {
		t.Fatal(err)
	}
	var c excludeCases
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Cases) < 10 || len(c.Bad) == 0 {
		t.Fatalf("testdata/exclude.json holds %d cases and %d bad patterns", len(c.Cases), len(c.Bad))
	}
	for _, tc := range c.Cases {
		x, err := CompileExclude(tc.Patterns)
		if err != nil {
			t.Fatalf("%q: %v", tc.Patterns, err)
		}
		if got := x.Excludes(tc.Name); got != tc.Excluded {
			t.Errorf("patterns %q, name %q: excluded = %v, want %v", tc.Patterns, tc.Name, got, tc.Excluded)
		}
	}
	for _, p := range c.Bad {
		_, err := CompileExclude([]string{"ok", p})
		if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), `"`+p+`"`) {
			t.Errorf("pattern %q: error %v, want ErrInput naming the pattern", p, err)
		}
	}
}
