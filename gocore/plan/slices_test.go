package plan

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestSplitLayer(t *testing.T) {
	for _, tc := range []struct {
		name, prefix, suffix string
		layer                int
		ok                   bool
	}{
		{"model.layers.3.mlp.up_proj.weight", "model.layers.", ".mlp.up_proj.weight", 3, true},
		{"transformer.h.11.attn.c_attn.weight", "transformer.h.", ".attn.c_attn.weight", 11, true},
		{"layers.0", "layers.", "", 0, true},
		{"model.layers.2.experts.7.w1", "model.layers.", ".experts.7.w1", 2, true}, // the first index
		{"model.embed_tokens.weight", "", "", 0, false},
		{"h2o.weight", "", "", 0, false},
		{"model..norm", "", "", 0, false},
	} {
		p, l, s, ok := SplitLayer(tc.name)
		if p != tc.prefix || l != tc.layer || s != tc.suffix || ok != tc.ok {
			t.Errorf("SplitLayer(%q) = %q, %d, %q, %v", tc.name, p, l, s, ok)
		}
		if ok && p+fmt.Sprint(l)+s != tc.name {
			t.Errorf("%q does not rebuild", tc.name)
		}
	}
}

// llama is a model of n layers with Llama's names.
func llama(where string, n int) Input {
	in := Input{Where: where, Tensors: []Tensor{{Name: "model.embed_tokens.weight", DType: "F32", Shape: []int64{8, 4}}}}
	for i := range n {
		in.Tensors = append(in.Tensors,
			Tensor{Name: fmt.Sprintf("model.layers.%d.mlp.w", i), DType: "F32", Shape: []int64{4, 4}},
			Tensor{Name: fmt.Sprintf("model.layers.%d.norm", i), DType: "F32", Shape: []int64{4}})
	}
	return Input{Where: in.Where, Tensors: append(in.Tensors,
		Tensor{Name: "model.norm.weight", DType: "F32", Shape: []int64{4}},
		Tensor{Name: "lm_head.weight", DType: "F32", Shape: []int64{8, 4}})}
}

// Slices numbers the output's layers on from slice to slice, maps each
// to its source's layer, places the layers of each slice at k/(n−1), and
// takes the embeddings from the first slice, the rest from the last (cut to
// the first slice's source count).
func TestSlicesMapsLayers(t *testing.T) {
	inputs := []Input{llama("A", 4), llama("B", 4), llama("C", 4)}
	groups, layers, bad := Slices(inputs, [][]SliceSource{
		{{Input: 0, Start: 0, End: 3, Where: "s0a"}},
		{{Input: 1, Start: 3, End: 4, Where: "s1a"}},
		{{Input: 1, Start: 0, End: 2, Where: "s2a"}, {Input: 2, Start: 2, End: 4, Where: "s2b"}},
	})
	if len(bad) > 0 || layers != 6 {
		t.Fatalf("layers %d, problems %v", layers, bad)
	}
	var parts []string
	for _, g := range groups {
		parts = append(parts, fmt.Sprintf("%s:%d:%v", g.Part, g.Slice, g.Sources))
	}
	if want := []string{"embeddings:0:[0]", "layers:0:[0]", "layers:1:[0]", "layers:2:[0 1]", "head:2:[0]"}; !slices.Equal(parts, want) {
		t.Fatalf("groups %v, want %v", parts, want)
	}
	for _, tc := range []struct {
		group, source int
		out, from     string
		pos           float64
	}{
		{0, 0, "model.embed_tokens.weight", "model.embed_tokens.weight", 0},
		{1, 0, "model.layers.2.mlp.w", "model.layers.2.mlp.w", 1},
		{1, 0, "model.layers.1.norm", "model.layers.1.norm", 0.5},
		{2, 0, "model.layers.3.mlp.w", "model.layers.3.mlp.w", 1}, // a one-layer slice sits at 1
		{3, 0, "model.layers.4.norm", "model.layers.0.norm", 0},
		{3, 1, "model.layers.5.mlp.w", "model.layers.3.mlp.w", 1},
		{4, 0, "lm_head.weight", "lm_head.weight", 0},
		{4, 0, "model.norm.weight", "model.norm.weight", 0},
	} {
		g := groups[tc.group]
		if got := g.From[tc.source][tc.out]; got != tc.from {
			t.Errorf("group %d source %d: %s comes from %q, want %q", tc.group, tc.source, tc.out, got, tc.from)
		}
		if got, ok := g.Position[tc.out]; !ok || got != tc.pos {
			t.Errorf("group %d: %s at %v, want %v", tc.group, tc.out, got, tc.pos)
		}
	}
	// Every source of a group holds the same output names.
	for _, g := range groups {
		want := slices.Sorted(maps.Keys(g.From[0]))
		for k := range g.From {
			if got := slices.Sorted(maps.Keys(g.From[k])); !slices.Equal(got, want) {
				t.Fatalf("%s of slice %d: source %d makes %v, source 0 %v", g.Part, g.Slice, k, got, want)
			}
		}
		if !strings.HasPrefix(g.Inputs[0].Where, "s") {
			t.Fatalf("input not named by its source: %q", g.Inputs[0].Where)
		}
	}
}

func TestSlicesProblems(t *testing.T) {
	inputs := []Input{llama("A", 4), {Where: "flat", Tensors: []Tensor{{Name: "w", DType: "F32", Shape: []int64{2}}}}}
	for _, tc := range []struct {
		slices [][]SliceSource
		want   string
	}{
		{[][]SliceSource{{{Input: 0, Start: 2, End: 6, Where: "slices[0].sources[0]"}}},
			"slices[0].sources[0]: layer_range [2, 6] reaches past the 4 layers of A (layers 0–3"},
		{[][]SliceSource{{{Input: 1, Start: 0, End: 1, Where: "slices[0].sources[0]"}}},
			"slices[0].sources[0]: flat has no layer-indexed tensors"},
		{[][]SliceSource{{{Input: 0, Start: 0, End: 2, Where: "x"}, {Input: 0, Start: 1, End: 4, Where: "y"}}},
			"y: layer_range [1, 4] spans 3 layers but x spans 2"},
		{[][]SliceSource{{}}, "slices[0] has no sources"},
	} {
		_, _, bad := Slices(inputs, tc.slices)
		if len(bad) != 1 || !strings.Contains(bad[0], tc.want) {
			t.Errorf("problems %q, want one containing %q", bad, tc.want)
		}
	}
}
