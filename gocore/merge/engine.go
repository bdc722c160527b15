package merge

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Tensor is one named tensor of a merge: the base θ₀, the fine-tuned θ_t
// (all of Base's length), and Out, where the result is written (same
// length; any dtype). Out must not alias an input. Shape is the tensor's
// shape in PyTorch layout (row-major, rows = neurons); nil means flat.
// Transposed marks tensors stored (in, out) instead of (out, in), such as
// GPT-2's Conv1D weights, for methods that work per neuron.
type Tensor struct {
	Name       string
	Shape      []int
	Transposed bool
	Base       tensor.Vec
	Models     []tensor.Vec
	Out        tensor.Vec
}

// Scope says over which entries a top-k selection ranks.
type Scope int

const (
	// ScopeTensor ranks each tensor on its own (the default).
	ScopeTensor Scope = iota
	// ScopeGlobal ranks all tensors of a model together, in the order given.
	ScopeGlobal
)

// ParseScope maps "tensor" and "global" to a Scope.
func ParseScope(s string) (Scope, error) {
	switch s {
	case "", "tensor":
		return ScopeTensor, nil
	case "global":
		return ScopeGlobal, nil
	}
	return 0, fmt.Errorf("unknown scope %q (want \"tensor\" or \"global\")", s)
}

// Params are the knobs shared by all methods.
type Params struct {
	// Weights w_t, one per model; nil means all 1.
	Weights []float32
	// Density is the fraction of entries kept by sparsification, in (0, 1].
	Density float64
	// Densities, when set, gives each model its own density (mergekit's
	// per-model `density`), overriding Density.
	Densities []float64
	// Lambda λ scales the merged task vector.
	Lambda float64
	// Normalize divides by the sum of weights (of the agreeing models, for
	// TIES' disjoint mean).
	Normalize bool
	// Scope of the top-k ranking.
	Scope Scope
	// Seed of every random choice.
	Seed uint64
}

// density is model m's density.
func (p *Params) density(m int) float64 {
	if p.Densities != nil {
		return p.Densities[m]
	}
	return p.Density
}

// ErrInput marks errors caused by the caller's data or parameters.
var ErrInput = errors.New("invalid merge input")

// chunkRef locates one chunk: tensor ti, elements [lo, hi), its index lc
// among the tensor's chunks and gc among all chunks of the merge.
type chunkRef struct {
	ti, lo, hi, lc, gc int
}

// engine holds one merge in progress.
type engine struct {
	method  Method
	p       Params
	tensors []Tensor
	T       int
	w       []float32
	wsum    float32
	chunks  []chunkRef
	first   []int // first global chunk of each tensor
	sp      sparsifyState
	scratch sync.Pool
}

// Run merges tensors with the named method. It returns an error wrapping
// ErrInput for unknown methods, bad parameters, mismatched lengths, or a NaN
// or Inf in an input (naming the tensor and the model).
func Run(method string, p Params, tensors []Tensor) error {
	m, ok := registry[method]
	if !ok {
		return fmt.Errorf("%w: unknown method %q (valid: %v)", ErrInput, method, Methods())
	}
	e, err := newEngine(m, p, tensors)
	if err != nil {
		return err
	}
	return e.run()
}

func newEngine(m Method, p Params, tensors []Tensor) (*engine, error) {
	if len(tensors) == 0 {
		return nil, fmt.Errorf("%w: no tensors", ErrInput)
	}
	T := len(tensors[0].Models)
	if T == 0 {
		return nil, fmt.Errorf("%w: no models to merge", ErrInput)
	}
	w := p.Weights
	if w == nil {
		w = make([]float32, T)
		for i := range w {
			w[i] = 1
		}
	}
	if len(w) != T {
		return nil, fmt.Errorf("%w: %d weights for %d models", ErrInput, len(w), T)
	}
	var wsum float32
	for i, x := range w {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("%w: weight %d is %v", ErrInput, i, x)
		}
		wsum += x
	}
	if p.Densities != nil && len(p.Densities) != T {
		return nil, fmt.Errorf("%w: %d densities for %d models", ErrInput, len(p.Densities), T)
	}
	if m.Sparsify.usesDensity() {
		for i := range T {
			if d := p.density(i); !(d > 0 && d <= 1) {
				return nil, fmt.Errorf("%w: density %v is outside (0, 1]", ErrInput, d)
			}
		}
	}
	if m.Combine.normalizes(p) && wsum == 0 {
		return nil, fmt.Errorf("%w: weights sum to 0, cannot normalize", ErrInput)
	}
	e := &engine{method: m, p: p, tensors: tensors, T: T, w: w, wsum: wsum}
	seen := make(map[string]bool, len(tensors))
	for ti, t := range tensors {
		if seen[t.Name] {
			return nil, fmt.Errorf("%w: tensor %q given twice", ErrInput, t.Name)
		}
		seen[t.Name] = true
		n := t.Base.Len()
		if t.Shape != nil {
			prod := 1
			for _, d := range t.Shape {
				prod *= d
			}
			if prod != n {
				return nil, fmt.Errorf("%w: tensor %q: shape %v holds %d elements, data has %d", ErrInput, t.Name, t.Shape, prod, n)
			}
		}
		if len(t.Models) != T {
			return nil, fmt.Errorf("%w: tensor %q has %d models, expected %d", ErrInput, t.Name, len(t.Models), T)
		}
		for mi, mv := range t.Models {
			if mv.Len() != n {
				return nil, fmt.Errorf("%w: tensor %q: model %d has %d elements, base has %d", ErrInput, t.Name, mi, mv.Len(), n)
			}
		}
		if t.Out.DType != 0 && t.Out.Len() != n {
			return nil, fmt.Errorf("%w: tensor %q: output has %d elements, base has %d", ErrInput, t.Name, t.Out.Len(), n)
		}
		e.first = append(e.first, len(e.chunks))
		for lc, lo := 0, 0; lo < n; lc, lo = lc+1, lo+parallel.Chunk {
			e.chunks = append(e.chunks, chunkRef{ti: ti, lo: lo, hi: min(lo+parallel.Chunk, n), lc: lc, gc: len(e.chunks)})
		}
	}
	return e, nil
}

// workspace is one goroutine's scratch: the base chunk, the model chunks,
// the task-vector chunks and the result chunk.
type workspace struct {
	base   []float32
	models [][]float32
	taus   [][]float32
	out    []float32
}

func (e *engine) workspace() *workspace {
	if ws, ok := e.scratch.Get().(*workspace); ok {
		return ws
	}
	ws := &workspace{base: make([]float32, parallel.Chunk), out: make([]float32, parallel.Chunk)}
	for range e.T {
		ws.models = append(ws.models, make([]float32, parallel.Chunk))
		ws.taus = append(ws.taus, make([]float32, parallel.Chunk))
	}
	return ws
}

// chunkError records the error of the lowest-numbered failing chunk, so
// that the message does not depend on scheduling.
type chunkError struct {
	mu  sync.Mutex
	gc  int
	err error
}

func (c *chunkError) set(gc int, err error) {
	c.mu.Lock()
	if c.err == nil || gc < c.gc {
		c.gc, c.err = gc, err
	}
	c.mu.Unlock()
}

func (e *engine) run() error {
	for _, t := range e.tensors {
		if t.Out.DType == 0 {
			return fmt.Errorf("%w: tensor %q has no output buffer", ErrInput, t.Name)
		}
	}
	if err := e.method.Sparsify.prepare(e, e.allUnits()); err != nil {
		return err
	}
	return e.mergeChunks(e.chunks)
}

// mergeChunks merges the given chunks in parallel and returns the error of
// the lowest-numbered failing chunk.
func (e *engine) mergeChunks(chunks []chunkRef) error {
	var fail chunkError
	parallel.For(len(chunks), func(_, i int) {
		ch := chunks[i]
		ws := e.workspace()
		defer e.scratch.Put(ws)
		if err := e.mergeChunk(ch, ws); err != nil {
			fail.set(ch.gc, err)
		}
	})
	return fail.err
}

// Merger is a merge whose outputs are produced one tensor at a time, for
// streaming checkpoints: only the tensor being merged needs an output
// buffer. With ScopeGlobal the first call ranks all tensors (reading every
// input once more) before merging.
type Merger struct {
	e        *engine
	prepared []bool
}

// NewMerger checks the method, parameters and inputs like Run; the
// tensors' Out fields are ignored.
func NewMerger(method string, p Params, tensors []Tensor) (*Merger, error) {
	m, ok := registry[method]
	if !ok {
		return nil, fmt.Errorf("%w: unknown method %q (valid: %v)", ErrInput, method, Methods())
	}
	ts := slices.Clone(tensors)
	for i := range ts {
		ts[i].Out = tensor.Vec{}
	}
	e, err := newEngine(m, p, ts)
	if err != nil {
		return nil, err
	}
	return &Merger{e: e, prepared: make([]bool, len(e.units()))}, nil
}

// Len is the number of tensors.
func (m *Merger) Len() int { return len(m.e.tensors) }

// Tensor merges tensor i into out (the base's length, any dtype), in
// parallel over its chunks. Calls must not overlap.
func (m *Merger) Tensor(i int, out tensor.Vec) error {
	e := m.e
	t := &e.tensors[i]
	if out.Len() != t.Base.Len() || out.DType == 0 {
		return fmt.Errorf("%w: tensor %q: output has %d elements, base has %d", ErrInput, t.Name, out.Len(), t.Base.Len())
	}
	u := i
	if e.p.Scope == ScopeGlobal {
		u = 0
	}
	if !m.prepared[u] {
		if err := e.method.Sparsify.prepare(e, []int{u}); err != nil {
			return err
		}
		m.prepared[u] = true
	}
	t.Out = out
	defer func() { t.Out = tensor.Vec{} }()
	return e.mergeChunks(e.tensorChunks(i))
}

// tensorChunks are tensor i's chunks.
func (e *engine) tensorChunks(i int) []chunkRef {
	end := len(e.chunks)
	if i+1 < len(e.first) {
		end = e.first[i+1]
	}
	return e.chunks[e.first[i]:end]
}

// allUnits lists every selection unit's index.
func (e *engine) allUnits() []int {
	n := len(e.tensors)
	if e.p.Scope == ScopeGlobal {
		n = 1
	}
	us := make([]int, n)
	for i := range us {
		us[i] = i
	}
	return us
}

// mergeChunk loads one chunk of every input, forms and sparsifies the task
// vectors, combines them and stores the result.
func (e *engine) mergeChunk(ch chunkRef, ws *workspace) error {
	t := &e.tensors[ch.ti]
	n := ch.hi - ch.lo
	base := t.Base.View(ch.lo, n, ws.base)
	if !finite(base) {
		return e.nonFinite(ch, "the base model", base)
	}
	models := ws.models[:e.T]
	taus := ws.taus[:e.T]
	for m := range e.T {
		mv := t.Models[m].View(ch.lo, n, ws.models[m])
		if !finite(mv) {
			return e.nonFinite(ch, fmt.Sprintf("model %d", m), mv)
		}
		models[m] = mv
		tau := ws.taus[m][:n]
		for j, x := range mv {
			tau[j] = x - base[j]
		}
		e.method.Sparsify.apply(e, m, ch, tau)
		taus[m] = tau
	}
	out := ws.out[:n]
	e.method.Combine.combine(e, base, models, taus, out)
	t.Out.Store(out, ch.lo)
	return nil
}

func (e *engine) nonFinite(ch chunkRef, who string, x []float32) error {
	for j, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%w: tensor %q: %s has %v at flat index %d", ErrInput, e.tensors[ch.ti].Name, who, v, ch.lo+j)
		}
	}
	return nil
}

// finite reports whether every element is finite. x−x is 0 for finite x and
// NaN for NaN and ±Inf, so one comparison after the loop suffices.
func finite(x []float32) bool {
	var acc float32
	for _, v := range x {
		acc += v - v
	}
	return acc == 0
}

// Methods lists the registered method names, sorted.
func Methods() []string {
	names := make([]string, 0, len(registry))
	for k := range registry {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// Lookup returns the named method.
func Lookup(name string) (Method, bool) {
	m, ok := registry[name]
	return m, ok
}
