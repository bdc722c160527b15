package plan

import (
	"fmt"
	"strings"
)

// prefixHint explains a model whose tensor names are the base's with a
// prefix added or removed (a task head's wrapper: "bert." in a
// BertForSequenceClassification against a BertModel base), or "" when
// its missing and extra names do not show one. missing are the base's
// names the model lacks, extra the model's names the base lacks (both
// sorted); at least 90% of the missing names must be explained.
func prefixHint(missing []string, extra []Tensor, model string) string {
	if len(missing) == 0 || len(extra) == 0 {
		return ""
	}
	extraSet := make(map[string]bool, len(extra))
	for _, t := range extra {
		extraSet[t.Name] = true
	}
	missingSet := make(map[string]bool, len(missing))
	for _, m := range missing {
		missingSet[m] = true
	}
	enough := func(n, of int) bool { return n*10 >= of*9 }
	m0 := missing[0]
	for _, t := range extra {
		// The model adds a prefix: extra = P + missing.
		if p, ok := strings.CutSuffix(t.Name, m0); ok && strings.HasSuffix(p, ".") {
			n := 0
			for _, m := range missing {
				if extraSet[p+m] {
					n++
				}
			}
			if enough(n, len(missing)) {
				return fmt.Sprintf("%s's names look like the base's with the prefix %q added (%q): strip it from the model's names or add it to the base's", model, p, t.Name)
			}
		}
		// The model lacks the base's prefix: missing = P + extra.
		if p, ok := strings.CutSuffix(m0, t.Name); ok && strings.HasSuffix(p, ".") {
			n := 0
			for _, m := range missing {
				if rest, ok := strings.CutPrefix(m, p); ok && extraSet[rest] {
					n++
				}
			}
			if enough(n, len(missing)) {
				return fmt.Sprintf("%s's names look like the base's without the prefix %q (%q for %q): add it to the model's names or strip it from the base's", model, p, t.Name, m0)
			}
		}
	}
	return ""
}
