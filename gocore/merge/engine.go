package merge

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// Tensor is one named tensor of a merge: the base θ₀, the fine-tuned θ_t
// (all of Base's length), and Out, where the result is written (same
// length; any dtype). Out must not alias an input. Shape is the tensor's
// shape in PyTorch layout (row-major, rows = neurons); nil means flat.
// Transposed marks 2-D tensors stored (in, out) instead of (out, in), such
// as GPT-2's Conv1D weights; the row-wise methods (della, della_linear,
// neuro) then work on the transpose, so that a row is still a neuron.
type Tensor struct {
	Name       string
	Shape      []int
	Transposed bool
	Base       tensor.Vec
	Models     []tensor.Vec
	Out        tensor.Vec
}

// geom is a tensor's neuron layout: rows × cols with a neuron per row.
// For a row-wise method the "layout index" of element (r, c) is r·cols + c;
// a transposed tensor stores it at c·rows + r.
type geom struct {
	rows, cols int
	// transposed: the layout is the transpose of the storage.
	transposed bool
	// neuron: the tensor has two or more dimensions (rows are neurons);
	// otherwise it is one row of scalars.
	neuron bool
}

// geometry derives a tensor's layout from its shape: conv kernels (out, in,
// kh, kw) become out rows of in·kh·kw; 1-D and shapeless tensors are one
// row.
func geometry(t *Tensor, n int) geom {
	if len(t.Shape) < 2 {
		return geom{rows: 1, cols: n}
	}
	rows := t.Shape[0]
	if rows == 0 {
		return geom{rows: 0, cols: 0, neuron: true}
	}
	g := geom{rows: rows, cols: n / rows, neuron: true}
	if t.Transposed && len(t.Shape) == 2 {
		g = geom{rows: t.Shape[1], cols: t.Shape[0], transposed: true, neuron: true}
	}
	return g
}

// chunkRef locates one chunk: tensor ti, layout indices [lo, hi) (rows
// [r0, r1) for a row-wise method), its index lc among the tensor's chunks
// and gc among all chunks of the merge.
type chunkRef struct {
	ti, lo, hi, lc, gc int
	r0, r1             int
}

// engine holds one merge in progress.
type engine struct {
	method   Method
	p        Params
	tensors  []Tensor
	geom     []geom
	T        int
	w        []float32
	wsum     float32
	chunks   []chunkRef
	first    []int // first global chunk of each tensor
	maxChunk int
	scratch  sync.Pool
	// fused is the template of the method's fused merge pass (fused.go),
	// nil when it has none.
	fused *vec.TaskMerge

	// Preparation state: prepared[u] for each selection unit, all once
	// every unit is prepared and the finishing step ran.
	prepared []bool
	all      bool

	sp sparsifyState
	// Per-method state filled by the Combiner's prepare.
	coef    [][2]float32 // per tensor: model_stock (t, 1−t), slerp (c_a, c_b)
	mix     [][]float64  // per tensor: multislerp's, karcher's, nuslerp's coefficient of each input
	sce     []sceState   // per tensor: SCE's variance cut and weights (sce.go)
	fusion  []afState    // per tensor: arcee_fusion's row KLs and fence (arcee_fusion.go)
	rescale [][]float32  // per tensor, per model: the L1 rescale factor (rescale.go)
	pcb     [][]pcbCut   // per unit, per model
	pcbKeys pcbKept      // per unit: β's keys kept for the merge pass (pcb.go)
	// checked[u]: the top-k counting pass found every input of unit u
	// finite (selection.go), so the merge pass need not check them again.
	checked []bool
	neuro   neuroState
	data    dataState     // fisher, regmean (data.go)
	sub     subspaceState // tsv, iso_c, iso_cts (subspace.go)
	report  map[string]any
	reportM sync.Mutex
	ctx     context.Context // RunReportContext's: checked between chunks; nil: never cancelled

	// premerged[gc]: the one-pass selection already wrote chunk gc's
	// result (selection_onepass.go); the merge pass skips it once.
	premerged []bool
}

// Run merges tensors with the named method. It returns an error wrapping
// ErrInput for unknown methods, bad parameters, mismatched lengths, or a NaN
// or Inf in an input (naming the tensor and the model).
func Run(method string, p Params, tensors []Tensor) error {
	_, err := RunReport(method, p, tensors)
	return err
}

// RunReport is Run that also returns the method's report: the values it
// chose while merging (see Merger.Report). The map is the caller's.
func RunReport(method string, p Params, tensors []Tensor) (map[string]any, error) {
	return RunReportContext(context.Background(), method, p, tensors)
}

// RunReportContext is RunReport that stops once ctx is done, returning an
// error that wraps ctx.Err() ("merge cancelled: context canceled"). ctx is
// checked before each preparation step and before each chunk (about 16 Ki
// entries), so a cancel takes effect within one chunk's work per thread,
// or one preparation step (a subspace method's decompositions, a global
// top-k); the outputs are then partly written.
func RunReportContext(ctx context.Context, method string, p Params, tensors []Tensor) (map[string]any, error) {
	m, ok := registry[method]
	if !ok {
		return nil, inputErr("unknown method %q (valid: %v)", method, Methods())
	}
	if p.Tensorwise != nil {
		return runTensorwise(ctx, method, p, tensors)
	}
	e, err := newEngine(m, p, tensors)
	if err != nil {
		return nil, err
	}
	e.ctx = ctx
	for _, t := range e.tensors {
		if t.Out.DType == 0 {
			return nil, inputErr("tensor %q has no output buffer", t.Name)
		}
	}
	if err := e.prepareAndMerge(); err != nil {
		return nil, err
	}
	return e.reportCopy(), nil
}

func newEngine(m Method, p Params, tensors []Tensor) (*engine, error) {
	if len(tensors) == 0 {
		return nil, inputErr("no tensors")
	}
	T := len(tensors[0].Models)
	if T == 0 {
		return nil, inputErr("no models to merge")
	}
	if bad := checkValues(methodSpecs[m.Name], &p, T); len(bad) > 0 {
		return nil, inputErr("%s", strings.Join(Format(bad, NameWhere), "; "))
	}
	w := p.Weights
	if w == nil {
		w = make([]float32, T)
		for i := range w {
			w[i] = 1
		}
	}
	var wsum float32
	for _, x := range w {
		wsum += x
	}
	e := &engine{method: m, p: p, tensors: tensors, T: T, w: w, wsum: wsum, report: map[string]any{}}
	for _, c := range []any{m.Sparsify, m.Combine} {
		if ck, ok := c.(checker); ok {
			if err := ck.check(e); err != nil {
				return nil, err
			}
		}
	}
	if m.Combine.normalizes(p) && wsum == 0 {
		return nil, inputErr("weights sum to 0, cannot normalize")
	}
	seen := make(map[string]bool, len(tensors))
	for ti := range tensors {
		t := &tensors[ti]
		if seen[t.Name] {
			return nil, inputErr("tensor %q given twice", t.Name)
		}
		seen[t.Name] = true
		n := t.Base.Len()
		if t.Shape != nil {
			prod := 1
			for _, d := range t.Shape {
				if d < 0 {
					return nil, inputErr("tensor %q: negative dimension in shape %v", t.Name, t.Shape)
				}
				prod *= d
			}
			if prod != n {
				return nil, inputErr("tensor %q: shape %v holds %d elements, data has %d", t.Name, t.Shape, prod, n)
			}
		}
		if len(t.Models) != T {
			return nil, inputErr("tensor %q has %d models, expected %d", t.Name, len(t.Models), T)
		}
		for mi, mv := range t.Models {
			if mv.Len() != n {
				return nil, inputErr("tensor %q: model %d has %d elements, base has %d", t.Name, mi, mv.Len(), n)
			}
		}
		if t.Out.DType != 0 && t.Out.Len() != n {
			return nil, inputErr("tensor %q: output has %d elements, base has %d", t.Name, t.Out.Len(), n)
		}
		g := geometry(t, n)
		e.geom = append(e.geom, g)
		e.first = append(e.first, len(e.chunks))
		e.addChunks(ti, n, g)
	}
	e.prepared = make([]bool, len(e.units()))
	e.fused = e.fusedPlan()
	return e, nil
}

// addChunks splits tensor ti into chunks: parallel.Chunk elements each, or
// for a row-wise method whole rows of about parallel.Chunk elements (a row
// longer than that is a chunk of its own).
func (e *engine) addChunks(ti, n int, g geom) {
	if !e.method.Rows {
		for lc, lo := 0, 0; lo < n; lc, lo = lc+1, lo+parallel.Chunk {
			hi := min(lo+parallel.Chunk, n)
			e.chunks = append(e.chunks, chunkRef{ti: ti, lo: lo, hi: hi, lc: lc, gc: len(e.chunks)})
			e.maxChunk = max(e.maxChunk, hi-lo)
		}
		return
	}
	if n == 0 {
		return
	}
	per := max(1, parallel.Chunk/g.cols)
	for lc, r0 := 0, 0; r0 < g.rows; lc, r0 = lc+1, r0+per {
		r1 := min(r0+per, g.rows)
		ch := chunkRef{ti: ti, lo: r0 * g.cols, hi: r1 * g.cols, lc: lc, gc: len(e.chunks), r0: r0, r1: r1}
		e.chunks = append(e.chunks, ch)
		e.maxChunk = max(e.maxChunk, ch.hi-ch.lo)
	}
}

// density is model m's density as the method's sparsifier sees it.
func (e *engine) density(m int) float64 {
	if e.method.density != nil {
		return e.method.density(&e.p, m)
	}
	return e.p.density(m)
}

// wholeModel reports whether merging any tensor needs every tensor
// prepared first (a global scope, or statistics over the whole model).
func (e *engine) wholeModel() bool {
	if e.p.Scope == ScopeGlobal {
		return true
	}
	if wm, ok := e.method.Combine.(wholeModeler); ok {
		return wm.wholeModel(e)
	}
	return false
}

// prepareUnits runs the sparsifier's and the combiner's preparation for
// the given selection units that are not prepared yet; once every unit is,
// the combiner's finishing step (statistics over the whole model) runs.
func (e *engine) prepareUnits(us []int) error {
	if err := e.cancelled(); err != nil {
		return err
	}
	var todo []int
	for _, u := range us {
		if !e.prepared[u] {
			todo = append(todo, u)
		}
	}
	if len(todo) > 0 {
		if err := e.method.Sparsify.prepare(e, todo); err != nil {
			return err
		}
		if err := e.cancelled(); err != nil {
			return err
		}
		if err := e.method.Combine.prepare(e, todo); err != nil {
			return err
		}
		for _, u := range todo {
			e.prepared[u] = true
		}
	}
	if e.all || slices.Contains(e.prepared, false) {
		return nil
	}
	if f, ok := e.method.Combine.(finisher); ok {
		if err := e.cancelled(); err != nil {
			return err
		}
		if err := f.finish(e); err != nil {
			return err
		}
	}
	e.all = true
	return nil
}

// cancelled returns an error wrapping the context's error once the
// context of RunReportContext is done, else nil.
func (e *engine) cancelled() error {
	if e.ctx == nil {
		return nil
	}
	if err := e.ctx.Err(); err != nil {
		return fmt.Errorf("merge cancelled: %w", err)
	}
	return nil
}

// prepareAll prepares every unit (and runs the finishing step).
func (e *engine) prepareAll() error { return e.prepareUnits(e.allUnits()) }

// setReport records one entry of the method's report.
func (e *engine) setReport(key string, v any) {
	e.reportM.Lock()
	e.report[key] = v
	e.reportM.Unlock()
}

func (e *engine) reportCopy() map[string]any {
	e.reportM.Lock()
	defer e.reportM.Unlock()
	c := make(map[string]any, len(e.report))
	for k, v := range e.report {
		switch x := v.(type) {
		case map[string]float64:
			v = maps.Clone(x)
		case map[string]bool:
			v = maps.Clone(x)
		case []float64:
			v = slices.Clone(x)
		}
		c[k] = v
	}
	return c
}

// workspace is one goroutine's scratch: the base chunk, the model chunks,
// the task-vector chunks and the result chunk (maxChunk elements each),
// plus a row of the storage for transposed tensors and method scratch.
type workspace struct {
	base     []float32
	models   [][]float32
	taus     [][]float32
	views    [][]float32
	views16  [][]uint16 // mergeFused's bfloat16 inputs
	tauViews [][]float32
	out      []float32
	seg      []float32
	bands    []vec.Band // mergeFused's per-model keep rules
	drops    []vec.Drop // mergeFused's per-model DARE draws
}

func (e *engine) workspace() *workspace {
	if ws, ok := e.scratch.Get().(*workspace); ok {
		return ws
	}
	n := max(e.maxChunk, 1)
	ws := &workspace{base: make([]float32, n), out: make([]float32, n),
		views: make([][]float32, e.T), tauViews: make([][]float32, e.T)}
	for range e.T {
		ws.models = append(ws.models, make([]float32, n))
		ws.taus = append(ws.taus, make([]float32, n))
	}
	return ws
}

// view returns chunk ch of v in layout order as float32: the storage itself
// when it is float32 and not transposed, else a copy in scratch.
func (e *engine) view(v tensor.Vec, ch chunkRef, ws *workspace, scratch []float32) []float32 {
	n := ch.hi - ch.lo
	g := &e.geom[ch.ti]
	if !e.method.Rows || !g.transposed {
		return v.View(ch.lo, n, scratch)
	}
	// Layout row r is storage column r: gather the columns [r0, r1) of
	// every storage row i into dst[(r−r0)·cols + i].
	dst := scratch[:n]
	w := ch.r1 - ch.r0
	if len(ws.seg) < w {
		ws.seg = make([]float32, w)
	}
	seg := ws.seg[:w]
	for i := 0; i < g.cols; i++ {
		off := i*g.rows + ch.r0
		src := seg
		if v.DType == tensor.F32 {
			src = v.F32[off : off+w]
		} else {
			v.Load(seg, off)
		}
		for k, x := range src {
			dst[k*g.cols+i] = x
		}
	}
	return dst
}

// store writes a chunk given in layout order to v.
func (e *engine) store(v tensor.Vec, ch chunkRef, ws *workspace, src []float32) {
	g := &e.geom[ch.ti]
	if !e.method.Rows || !g.transposed {
		v.Store(src, ch.lo)
		return
	}
	w := ch.r1 - ch.r0
	if len(ws.seg) < w {
		ws.seg = make([]float32, w)
	}
	seg := ws.seg[:w]
	for i := 0; i < g.cols; i++ {
		for k := range seg {
			seg[k] = src[k*g.cols+i]
		}
		v.Store(seg, i*g.rows+ch.r0)
	}
}

// loadBase returns chunk ch of the base, or an error naming the first
// non-finite entry.
func (e *engine) loadBase(ch chunkRef, ws *workspace) ([]float32, error) {
	b := e.view(e.tensors[ch.ti].Base, ch, ws, ws.base)
	if !vec.Finite(b) {
		return nil, e.nonFinite(ch, "the base model", b)
	}
	return b, nil
}

// loadModel returns chunk ch of model m in buf (a workspace buffer), or an
// error naming the first non-finite entry.
func (e *engine) loadModel(ch chunkRef, m int, ws *workspace, buf []float32) ([]float32, error) {
	x := e.view(e.tensors[ch.ti].Models[m], ch, ws, buf)
	if !vec.Finite(x) {
		return nil, e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
	}
	return x, nil
}

// loadAll loads the base and every model of chunk ch and forms the raw task
// vectors τ_m = θ_m − θ₀ in ws.taus.
func (e *engine) loadAll(ch chunkRef, ws *workspace) (base []float32, models, taus [][]float32, err error) {
	return e.loadAllChecked(ch, ws, false)
}

// loadAllChecked is loadAll that skips the NaN/±Inf checks of the inputs
// when checked is set (the preparation already made them).
func (e *engine) loadAllChecked(ch chunkRef, ws *workspace, checked bool) (base []float32, models, taus [][]float32, err error) {
	n := ch.hi - ch.lo
	if checked {
		base = e.view(e.tensors[ch.ti].Base, ch, ws, ws.base)
	} else if base, err = e.loadBase(ch, ws); err != nil {
		return nil, nil, nil, err
	}
	// ws.views holds the chunk views: for float32 storage they are the
	// storage itself, so they must not replace the scratch in ws.models.
	models = ws.views[:e.T:e.T]
	taus = ws.tauViews[:e.T:e.T]
	for m := range e.T {
		var mv []float32
		if checked {
			mv = e.view(e.tensors[ch.ti].Models[m], ch, ws, ws.models[m])
		} else if mv, err = e.loadModel(ch, m, ws, ws.models[m]); err != nil {
			return nil, nil, nil, err
		}
		models[m] = mv
		tau := ws.taus[m][:n]
		vec.Sub(tau, mv, base)
		taus[m] = tau
	}
	return base, models, taus, nil
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

// mergeChunks merges the given chunks in parallel and returns the error of
// the lowest-numbered failing chunk.
func (e *engine) mergeChunks(chunks []chunkRef) error {
	var fail chunkError
	e.p.Pool.For(len(chunks), func(_, i int) {
		ch := chunks[i]
		if err := e.cancelled(); err != nil {
			fail.set(ch.gc, err)
			return
		}
		ws := e.workspace()
		defer e.scratch.Put(ws)
		if err := e.mergeChunk(ch, ws); err != nil {
			fail.set(ch.gc, err)
		}
	})
	return fail.err
}

// mergeChunk loads one chunk of every input, forms and sparsifies the task
// vectors, combines them and stores the result.
func (e *engine) mergeChunk(ch chunkRef, ws *workspace) error {
	if d, ok := e.method.Combine.(direct); ok && !generalOnly {
		if _, all := e.method.Sparsify.(keepAll); all && !e.method.Rows {
			return e.mergeDirect(d, ch, ws)
		}
	}
	if e.fused != nil && !generalOnly {
		return e.mergeFused(e.fused, ch, ws)
	}
	for _, c := range [2]any{e.method.Sparsify, e.method.Combine} {
		if cm, ok := c.(chunkMerger); ok && !generalOnly {
			if done, err := cm.mergeChunk(e, ch, ws); done {
				return err
			}
		}
	}
	u, _ := e.unitChunk(ch)
	base, models, taus, err := e.loadAllChecked(ch, ws, e.checked != nil && e.checked[u])
	if err != nil {
		return err
	}
	for m := range e.T {
		e.method.Sparsify.apply(e, m, ch, taus[m])
	}
	out := ws.out[:ch.hi-ch.lo]
	if fc, ok := e.method.Combine.(fallibleCombiner); ok {
		if err := fc.combineChecked(e, ch, base, models, taus, out); err != nil {
			return err
		}
	} else {
		e.method.Combine.combine(e, ch, base, models, taus, out)
	}
	if err := e.checkResult(ch, out); err != nil {
		return err
	}
	e.store(e.tensors[ch.ti].Out, ch, ws, out)
	return nil
}

// chunkMerger is a Sparsifier or Combiner with a merge pass of its own
// (DELLA's, della_merge.go; NeuroMerging's, neuro_merge.go): mergeChunk
// merges chunk ch, or reports false, having done nothing, to leave it to
// the general path.
type chunkMerger interface {
	mergeChunk(e *engine, ch chunkRef, ws *workspace) (bool, error)
}

// generalOnly makes mergeChunk take its general path for every method (no
// direct or fused pass), and the selections' samples read entry by entry:
// the tests compare the fast passes with it.
var generalOnly bool

// direct is a Combiner that can merge straight from the inputs, in one
// pass, when nothing is sparsified: no task-vector buffers, no separate
// passes for the finiteness checks.
type direct interface {
	// direct writes chunk ch's result into out from the base and model
	// chunks (storage order); base is nil when readsBase is false (the
	// base is then only checked for NaN and ±Inf).
	direct(e *engine, ch chunkRef, base []float32, models [][]float32, out []float32)
	readsBase() bool
}

// mergeDirect merges chunk ch with a direct combiner. Float32 inputs are
// read in place and a float32 output is written in place. A NaN or ±Inf in
// any input makes the result non-finite (0·Inf is NaN too), so only the
// result is checked; when it is not finite, the inputs are searched for the
// culprit so that the error names the same entry as the general path. A
// result that overflowed from finite inputs is refused, as there
// (checkResult).
func (e *engine) mergeDirect(d direct, ch chunkRef, ws *workspace) error {
	t := &e.tensors[ch.ti]
	n := ch.hi - ch.lo
	base := t.Base.View(ch.lo, n, ws.base)
	if !d.readsBase() {
		// Every merge rejects a corrupt base, even one that ignores it.
		if !vec.Finite(base) {
			return e.nonFinite(ch, "the base model", base)
		}
		base = nil
	}
	models := ws.views[:e.T:e.T]
	for m := range e.T {
		models[m] = t.Models[m].View(ch.lo, n, ws.models[m])
	}
	out := ws.out[:n]
	inPlace := t.Out.DType == tensor.F32
	if inPlace {
		out = t.Out.F32[ch.lo:ch.hi]
	}
	d.direct(e, ch, base, models, out)
	if !vec.Finite(out) {
		if base != nil && !vec.Finite(base) {
			return e.nonFinite(ch, "the base model", base)
		}
		for m, x := range models {
			if !vec.Finite(x) {
				return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
			}
		}
	}
	if err := e.checkResult(ch, out); err != nil {
		return err
	}
	if !inPlace {
		t.Out.Store(out, ch.lo)
	}
	return nil
}

// Merger is a merge whose outputs are produced one tensor at a time, for
// streaming checkpoints: only the tensor being merged needs an output
// buffer. When the method needs statistics over the whole model (a global
// scope, or NeuroMerging's automatic λ₂), the first call prepares every
// tensor (reading every input once more) before merging; otherwise each
// call prepares just its tensor.
type Merger struct {
	e  *engine
	tw *tensorwiseMerger // parameters that vary by tensor (e nil)
}

// NewMerger checks the method, parameters and inputs like Run; the
// tensors' Out fields are ignored.
func NewMerger(method string, p Params, tensors []Tensor) (*Merger, error) {
	m, ok := registry[method]
	if !ok {
		return nil, inputErr("unknown method %q (valid: %v)", method, Methods())
	}
	ts := slices.Clone(tensors)
	for i := range ts {
		ts[i].Out = tensor.Vec{}
	}
	if p.Tensorwise != nil {
		return newTensorwiseMerger(method, p, ts)
	}
	e, err := newEngine(m, p, ts)
	if err != nil {
		return nil, err
	}
	return &Merger{e: e}, nil
}

// Len is the number of tensors.
func (m *Merger) Len() int {
	if m.tw != nil {
		return len(m.tw.at)
	}
	return len(m.e.tensors)
}

// Tensor merges tensor i into out (the base's length, any dtype), in
// parallel over its chunks. The result is bit for bit the one Run writes.
// Calls must not overlap.
func (m *Merger) Tensor(i int, out tensor.Vec) error {
	if m.tw != nil {
		return m.tw.tensor(i, out)
	}
	e := m.e
	if i < 0 || i >= len(e.tensors) {
		return inputErr("tensor index %d out of range [0, %d)", i, len(e.tensors))
	}
	t := &e.tensors[i]
	if out.Len() != t.Base.Len() || out.DType == 0 {
		return inputErr("tensor %q: output has %d elements, base has %d", t.Name, out.Len(), t.Base.Len())
	}
	// The output is set before the preparation, which may merge into it
	// (the one-pass TIES family).
	t.Out = out
	defer func() { t.Out = tensor.Vec{} }()
	var err error
	if e.wholeModel() {
		err = e.prepareAll()
	} else {
		err = e.prepareUnits([]int{i})
	}
	if err != nil {
		return err
	}
	return e.mergeChunks(e.tensorChunks(i))
}

// TensorFrom is Tensor reading tensor i's inputs from base and models
// instead of the views given to NewMerger, for this call only: a stream
// that read them into memory of its own (the same bytes, the same element
// types and lengths) merges without touching the views. The output is bit
// for bit Tensor's when the bytes are the same. The other tensors' views
// are still read where the method reads them (WholeModel).
func (m *Merger) TensorFrom(i int, out, base tensor.Vec, models []tensor.Vec) error {
	if m.tw != nil {
		if i < 0 || i >= len(m.tw.at) {
			return inputErr("tensor index %d out of range [0, %d)", i, len(m.tw.at))
		}
		a := m.tw.at[i]
		return m.tw.subs[a[0]].TensorFrom(a[1], out, base, models)
	}
	e := m.e
	if i < 0 || i >= len(e.tensors) {
		return inputErr("tensor index %d out of range [0, %d)", i, len(e.tensors))
	}
	t := &e.tensors[i]
	if err := sameInputs(t, base, models); err != nil {
		return err
	}
	keepBase, keepModels := t.Base, t.Models
	t.Base, t.Models = base, models
	defer func() { t.Base, t.Models = keepBase, keepModels }()
	return m.Tensor(i, out)
}

// sameInputs checks that base and models can stand in for t's inputs: the
// same count, element types and lengths.
func sameInputs(t *Tensor, base tensor.Vec, models []tensor.Vec) error {
	if len(models) != len(t.Models) {
		return inputErr("tensor %q: %d models given, the merge has %d", t.Name, len(models), len(t.Models))
	}
	if base.DType != t.Base.DType || base.Len() != t.Base.Len() {
		return inputErr("tensor %q: base given as %v[%d], the merge has %v[%d]", t.Name, base.DType, base.Len(), t.Base.DType, t.Base.Len())
	}
	for k, v := range models {
		if w := t.Models[k]; v.DType != w.DType || v.Len() != w.Len() {
			return inputErr("tensor %q: model %d given as %v[%d], the merge has %v[%d]", t.Name, k, v.DType, v.Len(), w.DType, w.Len())
		}
	}
	return nil
}

// Report returns what the method chose so far, as JSON-friendly values
// (float64, bool, []float64, map[string]float64). Entries by method:
//
//   - neuro: "lam1", "lam2" (the λ₂ used), "lam2_auto" (whether it was
//     chosen automatically), "sigma" (σ_t, the L1 share of each task vector
//     the trim removed; present once every tensor is prepared).
//   - model_stock: "t", tensor name → the interpolation ratio t.
//   - slerp: "omega", tensor name → Ω in radians; "lerp", tensor name → true
//     where |cos Ω| > 0.9995 made it a plain lerp.
//   - fisher, regmean: "plain_average", tensor name → true for the tensors
//     without statistics (merged as the weighted mean); regmean also
//     "ridge", tensor name → the ridge δ where the system was singular.
//
// Other methods report nothing. The map is a copy.
func (m *Merger) Report() map[string]any {
	if m.tw != nil {
		return m.tw.report()
	}
	return m.e.reportCopy()
}

// tensorChunks are tensor i's chunks.
func (e *engine) tensorChunks(i int) []chunkRef {
	end := len(e.chunks)
	if i+1 < len(e.first) {
		end = e.first[i+1]
	}
	return e.chunks[e.first[i]:end]
}

// unit is a selection unit: its chunks (global indices), tensors and
// element count.
type unit struct {
	chunks  []chunkRef
	tensors []int
	n       int64
}

// units groups the chunks by selection scope: one unit per tensor, or a
// single unit for ScopeGlobal.
func (e *engine) units() []unit {
	if e.p.Scope == ScopeGlobal {
		var n int64
		ts := make([]int, len(e.tensors))
		for ti, t := range e.tensors {
			n += int64(t.Base.Len())
			ts[ti] = ti
		}
		return []unit{{chunks: e.chunks, tensors: ts, n: n}}
	}
	us := make([]unit, len(e.tensors))
	for ti, t := range e.tensors {
		us[ti] = unit{chunks: e.tensorChunks(ti), tensors: []int{ti}, n: int64(t.Base.Len())}
	}
	return us
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

// unitChunk is chunk ch's index inside its selection unit.
func (e *engine) unitChunk(ch chunkRef) (u, c int) {
	if e.p.Scope == ScopeGlobal {
		return 0, ch.gc
	}
	return ch.ti, ch.lc
}

func (e *engine) nonFinite(ch chunkRef, who string, x []float32) error {
	for j, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return inputErr("tensor %q: %s has %v at flat index %d", e.tensors[ch.ti].Name, who, v, e.storageIndex(ch, j))
		}
	}
	return nil
}

// Overflow thresholds: a float32 value whose magnitude reaches these rounds
// to ±Inf when narrowed (halfway between the largest finite value, 65504
// and 0x7F7F, and the next step).
var (
	f16Overflow  = float32(65520)
	bf16Overflow = math.Float32frombits(0x7F7F8000)
)

// checkResult refuses a merged chunk (layout order) that is not finite
// although its inputs are — λ or the weights made it overflow float32 — or
// that does not fit the output's dtype (float16 ends at 65504): a merge
// never writes ±Inf or NaN. The error names the tensor and the first such
// entry.
func (e *engine) checkResult(ch chunkRef, out []float32) error {
	t := &e.tensors[ch.ti]
	limit := float32(math.Inf(1))
	switch t.Out.DType {
	case tensor.F16:
		limit = f16Overflow
	case tensor.BF16:
		limit = bf16Overflow
	}
	if limit > math.MaxFloat32 && vec.Finite(out) || vec.BelowAbs(out, limit) {
		return nil
	}
	for j, v := range out {
		a := v
		if a < 0 {
			a = -a
		}
		if a < limit { // false for NaN
			continue
		}
		i := e.storageIndex(ch, j)
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return inputErr("tensor %q: the merged value at flat index %d is %v although every input is finite: λ or the weights are too large", t.Name, i, v)
		}
		return inputErr("tensor %q: the merged value %v at flat index %d does not fit the output dtype %v (it would become ±Inf): lower λ or the weights, or write a wider dtype", t.Name, v, i, t.Out.DType)
	}
	return nil
}

// storageIndex maps entry j of chunk ch (layout order) to its flat index in
// the tensor's storage.
func (e *engine) storageIndex(ch chunkRef, j int) int {
	g := &e.geom[ch.ti]
	if !e.method.Rows || !g.transposed {
		return ch.lo + j
	}
	r, c := ch.r0+j/g.cols, j%g.cols
	return c*g.rows + r
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
