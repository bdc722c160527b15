package merge

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var updateDocs = flag.Bool("update", false, "rewrite docs/methods.md from the spec table")

// methodsDoc renders the spec table as docs/methods.md.
func methodsDoc() string {
	var b strings.Builder
	b.WriteString("# Merge methods and their parameters\n\n")
	b.WriteString("Generated from the engine's spec table (`gocore/merge/spec.go`, `table.go`) by\n")
	b.WriteString("`go test ./gocore/merge -run TestMethodsDoc -update`; a test fails when it is stale.\n")
	b.WriteString("The same table drives `npsfuse.merge`'s keywords and checks, the YAML schema of\n")
	b.WriteString("`npsfuse merge` and the daemon's merge job.\n\n")
	b.WriteString("Every method accepts the common parameters (" + strings.Join(quotedCode(Common), ", ") + ");\n")
	b.WriteString("a method refuses `weight`, `density` and `lambda` where it does not read them (naming\n")
	b.WriteString("the parameter); the other ones it does not read are ignored, as in mergekit.\n\n")
	b.WriteString("Numeric and true/false parameters also take mergekit's per-tensor forms, globally and\n")
	b.WriteString("per model: a\n")
	b.WriteString("gradient (a list of numbers interpolated over the layers: a tensor of layer i of L sits at\n")
	b.WriteString("i/(L−1), every other tensor at 0) and a filter list (`[{filter: self_attn, value: 0.3},\n")
	b.WriteString("{value: 0.7}]`: the first condition whose filter is a substring of the tensor's name, or\n")
	b.WriteString("that has none, applies; its value is a number or a gradient; a true/false gradient picks\n")
	b.WriteString("its point ⌊t·(n−1)⌋ instead of interpolating). A model's own value comes\n")
	b.WriteString("first, then the global one, then the default. In Python a dict or a list of dicts is such\n")
	b.WriteString("a value for every model, and for a parameter that takes one value a list is a gradient.\n")
	b.WriteString("A method that ranks or measures the whole model at once (`scope: global`, `neuro`'s\n")
	b.WriteString("automatic λ₂) refuses them.\n\n")
	b.WriteString("## Methods\n\n| method | models | reads | normalize | rescale | scope | mergekit | what it computes |\n|---|---|---|---|---|---|---|---|\n")
	for _, m := range Methods() {
		s := methodSpecs[m]
		models := fmt.Sprintf("≥ %d", s.MinModels)
		if s.MaxModels > 0 {
			models = fmt.Sprintf("%d", s.MaxModels)
			if s.MinModels != s.MaxModels {
				models = fmt.Sprintf("%d–%d", s.MinModels, s.MaxModels)
			}
		}
		reads := strings.Join(quotedCode(s.Params), ", ")
		if reads == "" {
			reads = "—"
		}
		mk := ""
		if s.Mergekit {
			mk = "yes"
		}
		rescale := ""
		if s.Reads("rescale") {
			rescale = fmt.Sprint(s.Rescale)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %v | %s | %s | %s | %s |\n", m, models, reads, s.Normalize, rescale, s.Scope, mk, cell(s.Doc))
	}
	b.WriteString("\n## Parameters\n\n| parameter | Python keyword | type | one value or per model | default (config) | range | meaning |\n|---|---|---|---|---|---|---|\n")
	for _, n := range ParamNames() {
		p := paramSpecs[n]
		py := p.Python
		if py == "" {
			py = p.Name
		}
		def := "per method"
		switch {
		case p.Auto != "":
			def = "null: " + p.Auto
		case p.Default != nil:
			def = fmt.Sprint(p.Default)
			if p.PythonDefault != nil {
				def += fmt.Sprintf(" (Python %v)", p.PythonDefault)
			}
		case p.Kind == KindData:
			def = "required by its methods"
		}
		rng := ""
		if p.Range != nil {
			rng = p.Range.String()
		}
		if len(p.Choices) > 0 {
			rng = strings.Join(quotedCode(p.Choices), ", ")
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s | %s | %s | %s |\n", n, py, p.Kind, p.PerModel, cell(def), rng, cell(p.Doc))
	}
	b.WriteString("\n## Method-specific versions of shared parameters\n\n| method | parameter | required | default | range | meaning |\n|---|---|---|---|---|---|\n")
	for _, m := range Methods() {
		s := methodSpecs[m]
		names := make([]string, 0, len(s.Overrides))
		for n := range s.Overrides {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			o := s.Overrides[n]
			def, rng := "", ""
			if o.Default != nil {
				def = fmt.Sprint(o.Default)
			}
			if o.Range != nil {
				rng = o.Range.String()
			}
			fmt.Fprintf(&b, "| `%s` | `%s` | %v | %s | %s | %s |\n", m, n, o.Required, def, rng, cell(o.Doc))
		}
	}
	return b.String()
}

// cell escapes a table cell's pipes.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func quotedCode(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = "`" + x + "`"
	}
	return out
}

// TestMethodsDoc keeps docs/methods.md equal to the spec table.
func TestMethodsDoc(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "methods.md")
	want := methodsDoc()
	if *updateDocs {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./gocore/merge -run TestMethodsDoc -update)", err)
	}
	if string(got) != want {
		t.Fatalf("docs/methods.md is stale: run go test ./gocore/merge -run TestMethodsDoc -update")
	}
}
