package merge

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

func TestSettingEval(t *testing.T) {
	grad := Setting{{Values: []float64{0, 0.5, 0.3, 0.7, 1}}}
	filters := Setting{{Filter: "self_attn", Values: []float64{0.2}}, {Filter: "mlp", Values: []float64{1, 0}}, {Values: []float64{0.5}}}
	onlyMLP := Setting{{Filter: "mlp", Values: []float64{0.9}}}
	cases := []struct {
		name    string
		s       Setting
		tensor  string
		t       float64
		want    float64
		matches bool
	}{
		{"number", Setting{{Values: []float64{0.4}}}, "x", 0.7, 0.4, true},
		{"gradient start", grad, "x", 0, 0, true},
		{"gradient end", grad, "x", 1, 1, true},
		{"gradient knot", grad, "x", 0.5, 0.3, true},
		// s = 1/3·4 = 1.333…: (1 − 0.333…)·0.5 + 0.333…·0.3, in float64 as mergekit.
		{"gradient between", grad, "x", 1.0 / 3, (1-(4.0/3-1))*0.5 + (4.0/3-1)*0.3, true},
		{"first filter", filters, "model.layers.1.self_attn.q_proj.weight", 0.5, 0.2, true},
		{"filter with gradient", filters, "model.layers.1.mlp.up_proj.weight", 0.25, 0.75, true},
		{"no filter matches: the catch-all", filters, "model.norm.weight", 1, 0.5, true},
		{"star matches all", Setting{{Filter: "*", Values: []float64{3}}}, "a", 0, 3, true},
		{"nothing matches", onlyMLP, "model.norm.weight", 0, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := c.s.Eval(c.tensor, c.t)
			if ok != c.matches || got != c.want {
				t.Fatalf("got %v, %v; want %v, %v", got, ok, c.want, c.matches)
			}
		})
	}
	if (Setting{{Values: []float64{1}}}).Varies() || !grad.Varies() || !onlyMLP.Varies() {
		t.Fatal("Varies is wrong")
	}
}

func TestLayerPositions(t *testing.T) {
	names := []string{"model.embed_tokens.weight", "model.layers.0.mlp.w", "model.layers.1.attn.w",
		"model.layers.3.mlp.w", "model.norm.weight", "lm_head.weight"}
	got := LayerPositions(names)
	want := []float64{0, 0, 1.0 / 3, 1, 0, 0}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// One layer: mergekit puts it at t = 1.
	if got := LayerPositions([]string{"h.0.w", "wte"}); !slices.Equal(got, []float64{1, 0}) {
		t.Fatalf("one layer: got %v", got)
	}
}

// TestResolvePrecedence checks mergekit's order per tensor: a model's own
// value, else the global one, else the default, whichever forms they take.
func TestResolvePrecedence(t *testing.T) {
	v := Values{
		Global: map[string]any{"weight": []any{0.0, 1.0}, "density": []any{map[string]any{"filter": "attn", "value": 0.2}}},
		Models: []map[string]any{
			{"weight": []any{map[string]any{"filter": "mlp", "value": 2}}},
			{"weight": 3},
			{"density": 0.9},
		},
	}
	p, bad := Resolve("ties", 3, v)
	if len(bad) > 0 {
		t.Fatal(Format(bad, NameWhere))
	}
	if p.Tensorwise == nil {
		t.Fatal("no tensorwise settings")
	}
	q := p.ForTensor("l.1.mlp.w", 0.5)
	if !slices.Equal(q.Weights, []float32{2, 3, 0.5}) || !slices.Equal(q.Densities, []float64{1, 1, 0.9}) {
		t.Errorf("mlp: weights %v densities %v", q.Weights, q.Densities)
	}
	q = p.ForTensor("l.1.attn.w", 0.25)
	if !slices.Equal(q.Weights, []float32{0.25, 3, 0.25}) || !slices.Equal(q.Densities, []float64{0.2, 0.2, 0.9}) {
		t.Errorf("attn: weights %v densities %v", q.Weights, q.Densities)
	}
	if q.Tensorwise != nil {
		t.Error("ForTensor keeps Tensorwise")
	}
}

// A merge whose parameters vary by tensor equals one merge per tensor with
// that tensor's values, bit for bit, through Run and through a Merger.
func TestTensorwiseEqualsPerTensorMerges(t *testing.T) {
	names := []string{"embed.weight", "layers.0.attn.w", "layers.0.mlp.w", "layers.1.attn.w", "layers.1.mlp.w", "layers.2.mlp.w"}
	const n, T = 300, 3
	build := func() []Tensor {
		rr := rand.New(rand.NewPCG(5, 6))
		var ts []Tensor
		for _, name := range names {
			base := make([]float32, n)
			for i := range base {
				base[i] = float32(rr.NormFloat64())
			}
			tt := Tensor{Name: name, Base: tensor.FromF32(base), Out: tensor.FromF32(make([]float32, n))}
			for range T {
				m := make([]float32, n)
				for i := range m {
					m[i] = base[i] + 0.1*float32(rr.NormFloat64())
				}
				tt.Models = append(tt.Models, tensor.FromF32(m))
			}
			ts = append(ts, tt)
		}
		return ts
	}
	for _, method := range []string{"ties", "dare_linear", "breadcrumbs", "della", "task_arithmetic", "slerp"} {
		t.Run(method, func(t *testing.T) {
			v := Values{Global: map[string]any{"lambda": []any{1.0, 0.5}}}
			switch method {
			case "slerp":
				v = Values{Global: map[string]any{"t": []any{map[string]any{"filter": "mlp", "value": []any{0.1, 0.9}}, map[string]any{"value": 0.4}}}}
			case "task_arithmetic":
				v.Models = []map[string]any{{"weight": []any{0.2, 1.0}}, {"weight": 0.5}, nil}
			default:
				v.Global["density"] = []any{map[string]any{"filter": "attn", "value": 0.3}, map[string]any{"value": []any{0.4, 0.8}}}
			}
			models := T
			if method == "slerp" {
				models = 2
			}
			p, bad := Resolve(method, models, v)
			if len(bad) > 0 {
				t.Fatal(Format(bad, NameWhere))
			}
			trim := func(ts []Tensor) []Tensor {
				for i := range ts {
					ts[i].Models = ts[i].Models[:models]
				}
				return ts
			}
			all := trim(build())
			if err := Run(method, p, all); err != nil {
				t.Fatal(err)
			}
			pos := LayerPositions(names)
			viaMerger := trim(build())
			mg, err := NewMerger(method, p, viaMerger)
			if err != nil {
				t.Fatal(err)
			}
			for i, name := range names {
				single := trim(build())[i : i+1]
				if err := Run(method, p.ForTensor(name, pos[i]), single); err != nil {
					t.Fatal(err)
				}
				out := tensor.FromF32(make([]float32, n))
				if err := mg.Tensor(i, out); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(all[i].Out.F32, single[0].Out.F32) || !slices.Equal(out.F32, single[0].Out.F32) {
					t.Fatalf("%s differs from its own merge", name)
				}
			}
			if method == "slerp" {
				if om, _ := mg.Report()["omega"].(map[string]float64); len(om) != len(names) {
					t.Fatalf("report joins %d tensors, want %d", len(om), len(names))
				}
			}
		})
	}
}

func TestTensorwiseRefusedForWholeModelMerges(t *testing.T) {
	_, bad := Resolve("neuro", 2, Values{Global: map[string]any{"lambda": []any{1.0, 0.5}, "scope": "tensor"}})
	msgs := strings.Join(Format(bad, NameWhere), "; ")
	if !strings.Contains(msgs, "lambda varies by tensor") || !strings.Contains(msgs, "measures the whole model") {
		t.Fatalf("got %q", msgs)
	}
	// neuro with a fixed λ₂ merges each tensor on its own: accepted.
	if _, bad := Resolve("neuro", 2, Values{Global: map[string]any{"lambda": []any{1.0, 0.5}, "scope": "tensor", "lam2": 1.0}}); len(bad) > 0 {
		t.Fatal(Format(bad, NameWhere))
	}
}

// True/false parameters take filter lists and gradients too; a gradient
// picks its point ⌊t·(n−1)⌋, as mergekit does.
func TestBoolSettings(t *testing.T) {
	v := Values{Global: map[string]any{
		"normalize": []any{map[string]any{"filter": "mlp", "value": false}, map[string]any{"value": true}},
		"rescale":   []any{false, true, true},
	}}
	p, bad := Resolve("ties", 2, v)
	if len(bad) > 0 {
		t.Fatal(Format(bad, NameWhere))
	}
	for _, c := range []struct {
		name               string
		t                  float64
		normalize, rescale bool
	}{
		{"l.0.mlp.w", 0, false, false},
		{"l.0.attn.w", 0.49, true, false},
		{"l.1.attn.w", 0.5, true, true},
		{"l.2.mlp.w", 1, false, true},
	} {
		q := p.ForTensor(c.name, c.t)
		if q.Normalize != c.normalize || q.Rescale != c.rescale {
			t.Errorf("%s at %v: normalize %v rescale %v, want %v %v", c.name, c.t, q.Normalize, q.Rescale, c.normalize, c.rescale)
		}
	}
	if _, bad := Resolve("ties", 2, Values{Global: map[string]any{"normalize": []any{true, 0.5}}}); len(bad) == 0 {
		t.Fatal("a number in a true/false gradient is accepted")
	}
}
