package pybind

import (
	"encoding/json"
	"fmt"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/gocore/nps"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// npsOptions are NPSDecompose's options: nps.Config and the thread count.
type npsOptions struct {
	nps.Config
	Threads int `json:"threads"` // ≤ 0: the process default
}

// NPSDecompose forms τ = θ_ft − θ₀ for nTensors tensors (pairs at
// arrays/schemas, tensor-major: base then fine-tuned) and splits each into
// subspaces (gocore/nps). options is JSON: subspaces, kind ("svd" or
// "magnitude"), rank, power_iters, oversample, seed. It returns a handle
// for NPSBuild, NPSInfo and Free.
func NPSDecompose(options string, nTensors, arrays, schemas int) (h int, err error) {
	defer guard(&err)
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), 2*nTensors)
	if err != nil {
		return 0, err
	}
	defer b.Release()
	var o npsOptions
	if err := decodeStrict(nps.ErrInput, "options", options, &o); err != nil {
		return 0, err
	}
	opt, err := o.Options(parallel.Pool{Threads: o.Threads})
	if err != nil {
		return 0, err
	}
	inputs := make([]nps.TaskInput, nTensors)
	for i := range inputs {
		base, ft := b.Tensors[2*i], b.Tensors[2*i+1]
		inputs[i] = nps.TaskInput{Name: base.Name, Shape: base.Shape, Base: base.Vec, FT: ft.Vec}
	}
	return keep(nps.NewTask(inputs, opt))
}

// NPSInfo describes a decomposition as JSON: subspaces, elements, and per
// tensor its name, element count and SVD rank (0: magnitude bands).
func NPSInfo(h int) (info string, err error) {
	return withHandle(h, func(d *nps.Task) (any, error) {
		type t struct {
			Name  string `json:"name"`
			Numel int    `json:"numel"`
			Rank  int    `json:"rank"`
		}
		out := struct {
			Subspaces int   `json:"subspaces"`
			Elements  int64 `json:"elements"`
			Tensors   []t   `json:"tensors"`
		}{Subspaces: d.Subspaces(), Elements: d.NumElements()}
		for i := range d.Len() {
			name, n, r := d.TensorInfo(i)
			out.Tensors = append(out.Tensors, t{name, n, r})
		}
		return out, nil
	})
}

type npsWeights struct {
	Shared    []float64   `json:"shared"`
	PerTensor [][]float64 `json:"per_tensor"`
}

// NPSBuild builds the candidate τ_NPS for the given subspace weights (JSON
// {"shared": [...]} or {"per_tensor": [[...], ...]}), keeping the top keep
// fraction of |τ'| (over all tensors when global), and writes it into the
// nOut output tensors at arrays/schemas (one per tensor, in decomposition
// order, any float dtype; float32 outputs are written in place, others are
// rounded from a float32 scratch). It returns the number of entries kept.
func NPSBuild(h int, weights string, keep float64, global bool, nOut, arrays, schemas int) (kept int, err error) {
	defer guard(&err)
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), nOut)
	if err != nil {
		return 0, err
	}
	defer b.Release()
	t, err := getHandle[*nps.Task](h)
	if err != nil {
		return 0, err
	}
	var w npsWeights
	if err := decodeStrict(nps.ErrInput, "weights", weights, &w); err != nil {
		return 0, err
	}
	k, err := t.BuildInto(nps.Weights{Shared: w.Shared, PerTensor: w.PerTensor}, keep, global, vecs(b.Tensors))
	return int(k), err
}

// Apply writes, for each of nTensors tensors, out = base + Σ_i λ_i·τ_i
// (transfer and fusion). The pairs are tensor-major: base, the nTaus task
// vectors, then the output. lams is a JSON list of nTaus scales.
func Apply(lams string, nTensors, nTaus, arrays, schemas int) (err error) {
	defer guard(&err)
	per := nTaus + 2
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), nTensors*per)
	if err != nil {
		return err
	}
	defer b.Release()
	var l []float32
	if err := json.Unmarshal([]byte(lams), &l); err != nil || len(l) != nTaus {
		return fmt.Errorf("%w: lams must be a JSON list of %d numbers, got %q", nps.ErrInput, nTaus, lams)
	}
	for i := range nTensors {
		g := b.Tensors[i*per : (i+1)*per]
		if err := nps.Apply(parallel.Pool{}, g[per-1].Vec, g[0].Vec, vecs(g[1:1+nTaus]), l); err != nil {
			return fmt.Errorf("tensor %q: %w", g[0].Name, err)
		}
	}
	return nil
}

// NPSSessionNew starts a search session (gocore/nps.Session: the start
// point first, then optimizer generations) from the JSON of
// nps.SessionConfig; it returns a handle for the other NPSSession
// functions and Free.
func NPSSessionNew(config string) (h int, err error) {
	return newHandle(ErrSearch, "search config", config, nps.NewSession)
}

// NPSSessionRestore continues a session from NPSSessionState's JSON.
func NPSSessionRestore(state string) (h int, err error) {
	defer guard(&err)
	return keep(nps.RestoreSession([]byte(state)))
}

// NPSSessionAsk returns the pending candidates as a JSON list of vectors.
func NPSSessionAsk(h int) (string, error) {
	return withHandle(h, func(s *nps.Session) (any, error) { return s.Ask(), nil })
}

// NPSSessionTell tells the asked candidates' scores (a JSON list; null
// marks a failed evaluation).
func NPSSessionTell(h int, scores string) error {
	_, err := withHandle(h, func(s *nps.Session) (any, error) {
		f, err := parseScores(scores)
		if err != nil {
			return nil, err
		}
		return nil, s.Tell(f)
	})
	return err
}

// NPSSessionState is the session's whole state as JSON.
func NPSSessionState(h int) (string, error) {
	return withHandle(h, func(s *nps.Session) (any, error) { return s, nil })
}

// NPSSessionInfo describes the session as JSON (nps.Summary: started,
// pending, generation, done, best_x, best_f, start_f, evaluations, failures,
// history).
func NPSSessionInfo(h int) (string, error) {
	return withHandle(h, func(s *nps.Session) (any, error) { return s.Summary(), nil })
}
