package plan

import (
	"fmt"
	"strconv"
	"strings"
)

// A `slices:` merge (mergekit's frankenmerges) builds the output's layers
// from layer ranges of several models, slice after slice, each slice
// merging its sources' layers with its own method and parameters. Slices
// maps every output tensor to its source tensors; the door then plans and
// merges each group as a merge of its own (Make on the group's renamed
// inputs), so the kernels never see a slice.
//
// The rules, mergekit's (0.1.5, plan.py) for a model with one stack of
// layers:
//   - A tensor's layer is the first dot-separated decimal component of its
//     name (model.layers.3.mlp.up_proj.weight: 3); a model's layer count is
//     one more than its largest layer index.
//   - Slice s's sources must span the same number n of layers; output layers
//     are numbered on from the previous slices': source layer Start+k
//     becomes output layer L_s+k, with L_s the layers of slices 0…s−1.
//   - Within a slice, layer k sits at position t = k/(n−1) (t = 1 when
//     n = 1) for parameter gradients: a gradient runs over each slice.
//   - Tensors outside the layers are taken once: the embeddings (names
//     holding "embed", "wte" or "wpe") from the first slice's sources, every
//     other one (final norm, LM head) from the last slice's sources, cut to
//     as many sources as the first slice has (mergekit's zip), both at t = 0
//     with their slice's method and parameters.

// SliceSource is one source of a slice: an input and the layer range
// [Start, End) taken from it.
type SliceSource struct {
	Input      int // index into the inputs given to Slices
	Start, End int
	// Where names the source in messages ("slices[1].sources[0]").
	Where string
}

// Group is one merge of a slices plan: the output tensors one slice makes
// from its sources.
type Group struct {
	// Slice is the slice whose method and parameters apply.
	Slice int
	// Sources are indices into the slice's sources, in order.
	Sources []int
	// Inputs are each source's tensors of the group, renamed to the output's
	// names (Where: the source's Where and the input's).
	Inputs []Input
	// From maps, per source, an output name to the source tensor's name.
	From []map[string]string
	// Position is each output name's layer position t for gradients.
	Position map[string]float64
	// Part is "embeddings", "layers" or "head" (the non-layer tensors after
	// the layers), for messages.
	Part string
}

// SplitLayer splits a tensor name at its layer index:
// "model.layers.3.mlp.w" is ("model.layers.", 3, ".mlp.w"); ok is false
// for a name without one.
func SplitLayer(name string) (prefix string, layer int, suffix string, ok bool) {
	off := 0
	for part := range strings.SplitSeq(name, ".") {
		if part != "" && strings.Trim(part, "0123456789") == "" {
			if i, err := strconv.Atoi(part); err == nil {
				return name[:off], i, name[off+len(part):], true
			}
		}
		off += len(part) + 1
	}
	return "", 0, "", false
}

// LayerCount is one more than the largest layer index among in's tensors
// (0 for none).
func LayerCount(in Input) int {
	n := 0
	for _, t := range in.Tensors {
		if _, i, _, ok := SplitLayer(t.Name); ok {
			n = max(n, i+1)
		}
	}
	return n
}

// isEmbedding reports whether a tensor outside the layers comes before
// them (mergekit's pre_weights of the Llama, Mistral, GPT-2 families).
func isEmbedding(name string) bool {
	return strings.Contains(name, "embed") || strings.Contains(name, "wte") || strings.Contains(name, "wpe")
}

// Slices maps the output of a slices merge: slices[s] lists slice s's
// sources. It returns the groups (the embeddings first, then each slice's
// layers, then the head) and the output's layer count, or the problems of
// the layer ranges, each naming the slice and source.
func Slices(inputs []Input, slices [][]SliceSource) ([]Group, int, []string) {
	var bad []string
	counts := make([]int, len(inputs))
	for i, in := range inputs {
		counts[i] = LayerCount(in)
	}
	lengths := make([]int, len(slices))
	for s, srcs := range slices {
		if len(srcs) == 0 {
			bad = append(bad, fmt.Sprintf("slices[%d] has no sources", s))
			continue
		}
		for k, src := range srcs {
			where := inputs[src.Input].Where
			switch n := counts[src.Input]; {
			case n == 0:
				bad = append(bad, fmt.Sprintf("%s: %s has no layer-indexed tensors (names like model.layers.0.…): a slice takes layers", src.Where, where))
			case src.End > n:
				bad = append(bad, fmt.Sprintf("%s: layer_range [%d, %d] reaches past the %d layers of %s (layers 0–%d; the range's end is exclusive)",
					src.Where, src.Start, src.End, n, where, n-1))
			}
			if k == 0 {
				lengths[s] = src.End - src.Start
			} else if l := src.End - src.Start; l != lengths[s] {
				bad = append(bad, fmt.Sprintf("%s: layer_range [%d, %d] spans %d layers but %s spans %d; every source of a slice must span the same number of layers",
					src.Where, src.Start, src.End, l, srcs[0].Where, lengths[s]))
			}
		}
	}
	if len(bad) > 0 {
		return nil, 0, bad
	}
	var groups []Group
	first, last := slices[0], slices[len(slices)-1]
	lastSrc := make([]int, min(len(last), len(first)))
	for k := range lastSrc {
		lastSrc[k] = k
	}
	firstSrc := make([]int, len(first))
	for k := range firstSrc {
		firstSrc[k] = k
	}
	pre := Group{Slice: 0, Sources: firstSrc, Part: "embeddings"}
	post := Group{Slice: len(slices) - 1, Sources: lastSrc, Part: "head"}
	for _, g := range []*Group{&pre, &post} {
		srcs := slices[g.Slice]
		g.Position = map[string]float64{}
		for _, k := range g.Sources {
			src := srcs[k]
			in := inputs[src.Input]
			r := Input{Where: src.Where + ": " + in.Where}
			from := map[string]string{}
			for _, t := range in.Tensors {
				if _, _, _, ok := SplitLayer(t.Name); ok || isEmbedding(t.Name) != (g == &pre) {
					continue
				}
				r.Tensors = append(r.Tensors, located(t, src))
				from[t.Name] = t.Name
				g.Position[t.Name] = 0
			}
			g.Inputs = append(g.Inputs, r)
			g.From = append(g.From, from)
		}
	}
	if len(pre.Inputs) > 0 && len(pre.Inputs[0].Tensors) > 0 {
		groups = append(groups, pre)
	}
	layers := 0
	for s, srcs := range slices {
		n := lengths[s]
		g := Group{Slice: s, Position: map[string]float64{}, Part: "layers"}
		for k, src := range srcs {
			in := inputs[src.Input]
			r := Input{Where: src.Where + ": " + in.Where}
			from := map[string]string{}
			for _, t := range in.Tensors {
				prefix, i, suffix, ok := SplitLayer(t.Name)
				if !ok || i < src.Start || i >= src.End {
					continue
				}
				name := prefix + strconv.Itoa(layers+i-src.Start) + suffix
				from[name] = t.Name
				t.Name = name
				r.Tensors = append(r.Tensors, located(t, src))
				pos := 1.0
				if n > 1 {
					pos = float64(i-src.Start) / float64(n-1)
				}
				g.Position[name] = pos
			}
			g.Sources = append(g.Sources, k)
			g.Inputs = append(g.Inputs, r)
			g.From = append(g.From, from)
		}
		groups = append(groups, g)
		layers += n
	}
	if len(post.Inputs) > 0 && len(post.Inputs[0].Tensors) > 0 {
		groups = append(groups, post)
	}
	return groups, layers, nil
}

// located names the source in a tensor's File, which messages show.
func located(t Tensor, src SliceSource) Tensor {
	if t.File != "" {
		t.File = src.Where + ": " + t.File
	}
	return t
}
