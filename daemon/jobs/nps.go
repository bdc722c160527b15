package jobs

import (
	"fmt"
	"math"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/nps"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/plan"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// npsOptions are NPS-Pruning's knobs (METHODS.md, "NPS-Pruning"; Du, Fang,
// Li et al., 2025), shared by nps_prune, compress and nps_search.
type npsOptions struct {
	// The decomposition's options, as pybind's NPSDecompose reads them
	// (subspaces default 8 here).
	nps.Config
	// Keep is the fraction r of |τ'| kept (default 0.1; compress 0.05).
	Keep float64 `json:"keep,omitempty"`
	// Global ranks over all tensors together (default true).
	Global *bool `json:"global,omitempty"`
}

// Limits of the randomized SVD's options: rank and oversample are clipped
// to a tensor's smaller side anyway (no weight matrix has 2^20 rows and
// columns), and each power iteration costs two passes over the tensor.
const (
	maxRank       = 1 << 20
	maxPowerIters = 100
)

// normalize checks the options and completes their defaults, and those of
// the subspace weights w (weights).
func (o *npsOptions) normalize(defaultKeep float64, w *[]float64) error {
	if o.Subspaces == 0 {
		o.Subspaces = 8
	}
	if o.Subspaces < 1 || o.Subspaces > 64 {
		return invalid("subspaces must lie in [1, 64], got %d", o.Subspaces)
	}
	if _, err := nps.ParseKind(o.Kind); err != nil {
		return invalid("kind: %v", err)
	}
	if o.Kind == "" {
		o.Kind = "svd"
	}
	if o.Rank < 0 || o.PowerIters < 0 || o.Oversample < 0 {
		return invalid("rank, power_iters and oversample must be ≥ 0")
	}
	for _, f := range []struct {
		name   string
		v, max int
	}{{"rank", o.Rank, maxRank}, {"oversample", o.Oversample, maxRank}, {"power_iters", o.PowerIters, maxPowerIters}} {
		if f.v > f.max {
			return invalid("%s %d is over the limit of %d", f.name, f.v, f.max)
		}
	}
	if o.Keep == 0 {
		o.Keep = defaultKeep
	}
	if !(o.Keep > 0 && o.Keep <= 1) {
		return invalid("keep must lie in (0, 1], got %v", o.Keep)
	}
	if o.Global == nil {
		t := true
		o.Global = &t
	}
	return o.weights(w)
}

// weights checks the subspace weights *w: one per subspace, finite; nil
// becomes all 1.
func (o *npsOptions) weights(w *[]float64) error {
	if *w == nil {
		*w = make([]float64, o.Subspaces)
		for i := range *w {
			(*w)[i] = 1
		}
	}
	if len(*w) != o.Subspaces {
		return invalid("%d weights for %d subspaces", len(*w), o.Subspaces)
	}
	for i, x := range *w {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return invalid("weights[%d] is %v", i, x)
		}
	}
	return nil
}

// taskSet is a base and a fine-tuned model with the fine-tune's task
// vector τ = θ_ft − θ₀ decomposed into subspaces.
type taskSet struct {
	base, model tensors.Source
	names       []string // floating-point tensors, decomposed, in name order
	metas       []tensors.Meta
	task        *nps.Task     // τ decomposed; task.Out holds the last Build's τ_NPS
	pool        parallel.Pool // the daemon's thread count (Env.Pool)
	release     func()        // gives the set's memory reservation back
}

// close closes the sources and gives the reservation back.
func (t *taskSet) close() {
	_ = tensors.CloseAll(t.base, t.model)
	t.release()
}

// numel is the number of decomposed entries.
func (t *taskSet) numel() int64 {
	var n int64
	for _, m := range t.metas {
		n += m.Numel()
	}
	return n
}

// newTaskSet opens base and model and decomposes τ, holding a memory
// reservation (8 bytes per entry plus the SVD factors) until close.
func newTaskSet(rc *runCtx, baseRef, modelRef string, o *npsOptions) (t *taskSet, err error) {
	// On error: close what is open and give the reservation back (the
	// returns set t to nil first, so keep it apart).
	t = &taskSet{release: func() {}}
	ts := t
	defer func() {
		if err != nil {
			ts.close()
		}
	}()
	if t.base, err = rc.env.openRef(baseRef, "base"); err != nil {
		return nil, err
	}
	if t.model, err = rc.env.openRef(modelRef, "model"); err != nil {
		return nil, err
	}
	// The planner's rule, as for merges (integer tensors must match the
	// base's, values included). Merged() is in tensor-name order, as
	// npsfuse.nps lays them out: a global top-k keeps ties at the cut in
	// name order, as merge does.
	p, err := planSources(t.base, []tensors.Source{t.model}, plan.Options{}, nps.ErrInput)
	if err != nil {
		return nil, err
	}
	for _, e := range p.Merged() {
		bm, _ := t.base.Meta(e.Name)
		t.names = append(t.names, e.Name)
		t.metas = append(t.metas, bm)
	}
	release, err := rc.reserve(8*t.numel()+(64<<20), "the task vector and its decomposition")
	if err != nil {
		return nil, err
	}
	t.release = release
	inputs := make([]nps.TaskInput, len(t.names))
	for i, name := range t.names {
		inputs[i] = nps.TaskInput{Name: name, Shape: t.metas[i].IntShape()}
		if inputs[i].Base, err = sourceVec(t.base, name); err != nil {
			return nil, err
		}
		if inputs[i].FT, err = sourceVec(t.model, name); err != nil {
			return nil, err
		}
	}
	rc.progress(store.Progress{Message: fmt.Sprintf("computing task vectors; decomposing %d tensors into %d subspaces", len(inputs), o.Subspaces)})
	t.pool = rc.env.Pool
	opt, _ := o.Options(t.pool) // normalize checked the kind
	if t.task, err = nps.NewTask(inputs, opt); err != nil {
		return nil, err
	}
	return t, nil
}

// sourceVec views a floating-point tensor of src.
func sourceVec(src tensors.Source, name string) (tensor.Vec, error) {
	m, _ := src.Meta(name)
	b, err := src.Bytes(name)
	if err != nil {
		return tensor.Vec{}, err
	}
	return tensor.FromBytesAligned(b, mustKernel(m))
}

// build computes τ_NPS for weights w into t.task.Out and returns how
// many entries were kept.
func (t *taskSet) build(w []float64, o *npsOptions) (int64, error) {
	return t.task.Build(nps.Weights{Shared: w}, o.Keep, *o.Global)
}

// output builds τ_NPS for weights w (build) and describes the tensors an
// NPS job writes from it: the pruned task vector (float32, decomposed
// tensors only) or the transferred model θ₀ + λ·τ_NPS (every base tensor;
// floating-point ones in dtype or their base dtype). kept is how many
// entries the build kept.
func (t *taskSet) output(w []float64, o *npsOptions, output string, lam float64, dtype string) (kept int64, set *TensorSet, err error) {
	if kept, err = t.build(w, o); err != nil {
		return 0, nil, err
	}
	idx := map[string]int{}
	for i, n := range t.names {
		idx[n] = i
	}
	if output == "task_vector" {
		metas := make([]tensors.Meta, len(t.names))
		for i, m := range t.metas {
			metas[i] = tensors.Meta{Name: m.Name, DType: safetensors.F32, Shape: m.Shape}
		}
		return kept, sourceSet(t.base, metas, idx, func(i int, out tensor.Vec) error {
			out.Store(t.task.Out[i], 0)
			return nil
		}), nil
	}
	var outDT tensor.DType
	if dtype != "" {
		if outDT, err = tensor.ParseDType(dtype); err != nil {
			return 0, nil, invalid("dtype: %v", err)
		}
	}
	metas := sourceMetas(t.base)
	for i, m := range metas {
		if _, ok := idx[m.Name]; ok && outDT != 0 {
			metas[i].DType = tensors.FromKernel(outDT)
		}
	}
	lams := []float32{float32(lam)}
	return kept, sourceSet(t.base, metas, idx, func(k int, out tensor.Vec) error {
		bv, err := sourceVec(t.base, t.names[k])
		if err != nil {
			return err
		}
		return nps.Apply(t.pool, out, bv, []tensor.Vec{tensor.FromF32(t.task.Out[k])}, lams)
	}), nil
}

// pruneSpec is an nps_prune job: prune one fine-tune's task vector with
// fixed subspace weights and return θ₀ + λ·τ_NPS (output "model", the
// default) or τ_NPS (output "task_vector").
type pruneSpec struct {
	Base  string `json:"base"`
	Model string `json:"model"`
	npsOptions
	Weights []float64  `json:"weights,omitempty"`
	Lam     *float64   `json:"lam,omitempty"`
	Output  string     `json:"output,omitempty"`
	DType   string     `json:"dtype,omitempty"`
	Result  resultSpec `json:"result,omitempty"`
	Cleanup []string   `json:"cleanup,omitempty"`
}

func (s *pruneSpec) normalize(e *Env) error {
	if err := s.npsOptions.normalize(0.1, &s.Weights); err != nil {
		return err
	}
	if s.Lam == nil {
		one := 1.0
		s.Lam = &one
	}
	if math.IsNaN(*s.Lam) || math.IsInf(*s.Lam, 0) {
		return invalid("lam must be finite")
	}
	switch s.Output {
	case "":
		s.Output = "model"
	case "model", "task_vector":
	default:
		return invalid("output must be \"model\" or \"task_vector\", got %q", s.Output)
	}
	if s.DType != "" {
		if _, err := tensor.ParseDType(s.DType); err != nil {
			return invalid("dtype: %v", err)
		}
	}
	if err := s.Result.check(e); err != nil {
		return err
	}
	for _, ref := range []struct{ r, w string }{{s.Base, "base"}, {s.Model, "model"}} {
		if _, err := e.Resolve(ref.r, ref.w); err != nil {
			return err
		}
	}
	return e.CheckCleanup(s.Cleanup)
}

func runPrune(rc *runCtx, s *pruneSpec) (any, Session, error) {
	t, err := newTaskSet(rc, s.Base, s.Model, &s.npsOptions)
	if err != nil {
		return nil, nil, err
	}
	defer t.close()
	kept, set, err := t.output(s.Weights, &s.npsOptions, s.Output, *s.Lam, s.DType)
	if err != nil {
		return nil, nil, err
	}
	res, err := writeTensorResult(rc, s.Result, set.Metas, set.Fill)
	if err != nil {
		return nil, nil, err
	}
	n := t.numel()
	res["kept"], res["numel"], res["density"] = kept, n, float64(kept)/math.Max(1, float64(n))
	res["output"] = s.Output
	return res, nil, nil
}

// compressSpec is a compress job (METHODS.md, NPS-Pruning "Uses":
// compression): every model's task vector pruned with NPS and stored as a
// bit mask plus the kept values, θ₀ kept once by the caller. The tensors
// follow python/npsfuse/compress.py's conventions: "{t}:{name}:mask" is
// np.packbits (big bit order) of the kept entries ("kept" = a non-zero bit
// pattern, so −0.0 survives), "{t}:{name}:values" the kept entries in flat
// order, in the base tensor's dtype unless value_dtype says otherwise.
type compressSpec struct {
	Base   string   `json:"base"`
	Models []string `json:"models"`
	npsOptions
	Weights    []float64  `json:"weights,omitempty"`
	ValueDType string     `json:"value_dtype,omitempty"`
	Result     resultSpec `json:"result,omitempty"`
	Cleanup    []string   `json:"cleanup,omitempty"`
}

// check validates and completes a compress spec at submit time.
func (s *compressSpec) check(e *Env) error {
	if err := s.npsOptions.normalize(0.05, &s.Weights); err != nil {
		return err
	}
	if s.ValueDType != "" {
		if _, err := tensor.ParseDType(s.ValueDType); err != nil {
			return invalid("value_dtype: %v", err)
		}
	}
	if len(s.Models) == 0 {
		return invalid("models must list at least one fine-tuned model")
	}
	if _, err := e.Resolve(s.Base, "base"); err != nil {
		return err
	}
	for i, m := range s.Models {
		if _, err := e.Resolve(m, fmt.Sprintf("models[%d]", i)); err != nil {
			return err
		}
	}
	if err := s.Result.check(e); err != nil {
		return err
	}
	return e.CheckCleanup(s.Cleanup)
}

// PackMask returns the bit mask of the kept entries of x (those whose bit
// pattern is not all zeros, so −0.0 is kept), eight entries per byte, most
// significant bit first (NumPy's packbits default), and the kept entries
// in order. O(len(x)).
func PackMask(x []float32) (mask []byte, values []float32) {
	mask = make([]byte, (len(x)+7)/8)
	for i, v := range x {
		if math.Float32bits(v) != 0 {
			mask[i>>3] |= 0x80 >> (i & 7)
			values = append(values, v)
		}
	}
	return mask, values
}

func runCompress(rc *runCtx, s *compressSpec) (any, Session, error) {
	var metas []tensors.Meta
	var blobs [][]byte
	var reports []map[string]any
	for k, ref := range s.Models {
		t, err := newTaskSet(rc, s.Base, ref, &s.npsOptions)
		if err != nil {
			return nil, nil, fmt.Errorf("models[%d]: %w", k, err)
		}
		kept, err := t.build(s.Weights, &s.npsOptions)
		if err != nil {
			t.close()
			return nil, nil, err
		}
		var bits float64
		for i, name := range t.names {
			vdt := mustKernel(t.metas[i])
			if s.ValueDType != "" {
				vdt, _ = tensor.ParseDType(s.ValueDType)
			}
			mask, vals := PackMask(t.task.Out[i])
			metas = append(metas, tensors.Meta{Name: fmt.Sprintf("%d:%s:mask", k, name), DType: safetensors.U8, Shape: []int64{int64(len(mask))}})
			blobs = append(blobs, mask)
			vb := make([]byte, len(vals)*vdt.Size())
			if len(vals) > 0 {
				v, err := tensor.FromBytes(vb, vdt)
				if err != nil {
					t.close()
					return nil, nil, err
				}
				v.Store(vals, 0)
			}
			metas = append(metas, tensors.Meta{Name: fmt.Sprintf("%d:%s:values", k, name), DType: tensors.FromKernel(vdt), Shape: []int64{int64(len(vals))}})
			blobs = append(blobs, vb)
			bits += float64(t.metas[i].Numel()) + float64(len(vals)*8*vdt.Size())
		}
		n := t.numel()
		reports = append(reports, map[string]any{"model": ref, "kept": kept, "numel": n,
			"bits_per_param": bits / math.Max(1, float64(n))})
		t.close()
		rc.progress(store.Progress{Done: int64(k + 1), Total: int64(len(s.Models)), Unit: "models"})
	}
	res, err := writeTensorResult(rc, s.Result, metas, func(i int, dst []byte) error {
		copy(dst, blobs[i])
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	res["models"] = reports
	res["mask_bit_order"] = "big"
	return res, nil, nil
}
