package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/arrowio/stream"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/plan"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// resultSpec says where a tensor result goes.
type resultSpec struct {
	// Shm writes the result as an Arrow IPC file into the shared-memory
	// folder (same-host clients map it); otherwise it goes to the results
	// folder and is fetched with DoGet.
	Shm bool `json:"shm,omitempty"`
	// Recycle is the client's slab prefix: a shared-memory result goes
	// into a free slab "<Recycle>-…" of its size that the client handed
	// back (or a new one), and the result names the slab ("slab") so that
	// the client can hand it back once it holds no view of it.
	Recycle string `json:"recycle,omitempty"`
}

// check validates the result options against the daemon's configuration.
func (r resultSpec) check(e *Env) error {
	if r.Shm && e.ShmDir == "" {
		return invalid("result.shm: the shared-memory path is disabled on this daemon")
	}
	if r.Recycle != "" {
		if !r.Shm {
			return invalid("result.recycle %q needs result.shm: slabs are shared-memory files", r.Recycle)
		}
		if err := CheckUploadName(r.Recycle); err != nil {
			return fmt.Errorf("result.recycle: %w", err)
		}
	}
	return nil
}

// mergeSpec is a merge job: a mergekit-style configuration whose
// base_model and models[].model are absolute paths inside the data roots
// (checkpoint folders, .safetensors files, Arrow IPC tensor files) or
// upload:NAME references. With OutDir the merge streams checkpoint to
// checkpoint (arrowio/stream); without it the merged tensors are the
// job's result.
type mergeSpec struct {
	Config       map[string]any `json:"config"`
	OutDir       string         `json:"out_dir,omitempty"`
	ShardSize    int64          `json:"shard_size,omitempty"`
	DType        string         `json:"dtype,omitempty"`
	AllowMissing bool           `json:"allow_missing,omitempty"`
	Force        bool           `json:"force,omitempty"`
	Result       resultSpec     `json:"result,omitempty"`
	Cleanup      []string       `json:"cleanup,omitempty"`

	// mergekit-multi (mergekit.go): the documents of a multi-document
	// file, each a merge config with a name but the final one (instead of
	// Config); the named merges go to IntermediateDir/NAME, skipped there
	// when they exist unless Lazy is false.
	Configs         []map[string]any `json:"configs,omitempty"`
	IntermediateDir string           `json:"intermediate_dir,omitempty"`
	Lazy            *bool            `json:"lazy,omitempty"`
	// mergekit-moe (a Config with experts:): npsfuse moe's options.
	Seed          *int64 `json:"seed,omitempty"`
	AllowAllSame  bool   `json:"allow_all_same,omitempty"`
	CopyTokenizer *bool  `json:"copy_tokenizer,omitempty"`
}

// decodeStrict decodes a spec by every door's rule (fault.DecodeJSON).
func decodeStrict(spec json.RawMessage, v any) error {
	if err := fault.DecodeJSON(spec, v, false); err != nil {
		return invalid("spec: %v", err)
	}
	return nil
}

// resolveMerge replaces every model reference of the config by the path
// to read and parses the result with stream.ParseConfig (which reports
// every problem of the configuration at once). scratch is the job's
// scratch folder when the config was prepared by npsfuse._prepare ("" for
// a config as the client sent it): paths inside it are read too, and the
// internal npsfuse_vocabulary key (the merged tokenizer's row maps) is
// accepted, its paths resolved like the models'. Its callers have
// checked s.what first (a config is there; npsfuse_vocabulary comes only
// from npsfuse._prepare, with scratch set).
func resolveMerge(e *Env, s *mergeSpec, scratch string) (*stream.Config, []string, error) {
	roots := e.Roots
	if scratch != "" {
		var err error
		if roots, err = config.NewRoots(append(e.Roots.Dirs(), scratch)...); err != nil {
			return nil, nil, err
		}
	}
	var paths []string
	resolve := func(v any, where string) (any, error) {
		ref, ok := v.(string)
		switch {
		case !ok:
			return v, nil // ParseConfig reports the type
		case where == "npsfuse_vocabulary.tokenizer_dir":
			return scratchDir(roots, ref, scratch)
		}
		p, err := e.resolveIn(roots, ref, where)
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(where, "npsfuse_vocabulary.") {
			paths = append(paths, p)
		}
		return p, nil
	}
	// A data-aware method's statistics file is read like a model: inside
	// the data roots only. The vocabulary's row maps name the model
	// folders, resolved as the models' own references are.
	cfg, err := editRefs(s.Config, "", resolve, "npsfuse_vocabulary.tokenizer_dir", "npsfuse_vocabulary.models[].path",
		"base_model", "models[].model", "models[].parameters.statistics", "slices[].base_model", "slices[].sources[].model")
	if err != nil {
		return nil, nil, err
	}
	text, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, invalid("config: %v", err)
	}
	c, err := stream.ParseConfig(text, "")
	if err != nil {
		return nil, nil, err
	}
	return c, paths, nil
}

// refFunc gives the replacement of the reference v (not nil) of a config,
// named where in messages.
type refFunc func(v any, where string) (any, error)

// editRefs returns a copy of the config value v in which f has replaced
// each value at paths that is present and not nil (v itself is left as it
// is). A path is keys joined by "."; "key[]" walks every item of the list
// at key. The paths under one key are walked together, item by item, in
// the order given; a value of another shape than a path expects is kept
// (ParseConfig reports it). where is v's own name ("" for the config).
func editRefs(v any, where string, f refFunc, paths ...string) (any, error) {
	if len(paths) == 1 && paths[0] == "" {
		if v == nil {
			return nil, nil
		}
		return f(v, where)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return v, nil
	}
	m = maps.Clone(m)
	for len(paths) > 0 {
		key, _, _ := strings.Cut(paths[0], ".")
		var under, others []string
		for _, p := range paths {
			if k, rest, _ := strings.Cut(p, "."); k == key {
				under = append(under, rest)
			} else {
				others = append(others, p)
			}
		}
		paths = others
		name, each := strings.CutSuffix(key, "[]")
		sub, ok := m[name]
		if !ok {
			continue
		}
		at := name
		if where != "" {
			at = where + "." + name
		}
		var err error
		if list, ok := sub.([]any); each && ok {
			out := make([]any, len(list))
			for i, item := range list {
				if out[i], err = editRefs(item, fmt.Sprintf("%s[%d]", at, i), f, under...); err != nil {
					return nil, err
				}
			}
			m[name] = out
		} else if !each {
			if m[name], err = editRefs(sub, at, f, under...); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// refsAt lists (where, reference) of every string at paths of cfg
// (editRefs's), empty ones included, in editRefs's order.
func refsAt(cfg map[string]any, paths ...string) [][2]string {
	var out [][2]string
	_, _ = editRefs(cfg, "", func(v any, where string) (any, error) {
		if s, ok := v.(string); ok {
			out = append(out, [2]string{where, s})
		}
		return v, nil
	}, paths...)
	return out
}

// scratchDir resolves a prepared config's npsfuse_vocabulary.tokenizer_dir
// (the merged tokenizer's folder; "" is kept) within roots (the data roots
// and the job's scratch folder): it must lie in the scratch folder, where
// npsfuse._prepare writes it.
func scratchDir(roots config.Roots, d, scratch string) (any, error) {
	if d == "" {
		return d, nil
	}
	r, err := roots.Check(d)
	if err != nil {
		return nil, fmt.Errorf("npsfuse_vocabulary.tokenizer_dir: %w", err)
	}
	sr, err := filepath.EvalSymlinks(scratch)
	if err != nil {
		return nil, fmt.Errorf("job scratch folder: %w", err)
	}
	if !within(r, sr) {
		return nil, fault.Errorf(fault.Permission, "npsfuse_vocabulary.tokenizer_dir %s is outside the job's scratch folder %s", d, scratch)
	}
	return r, nil
}

// preparation is what of a client's config npsfuse._prepare must prepare
// (nil: nothing, the config goes to Go as it is). tokenizer_source: base
// alone runs in Go without Python, as before the daemon had Python; with
// Python it is prepared as `npsfuse merge` prepares it.
func (e *Env) preparation(cfg map[string]any) (*prepPlan, error) {
	if _, ok := cfg["npsfuse_vocabulary"]; ok {
		return nil, invalid("config: npsfuse_vocabulary is the internal key of npsfuse's tokenizer merge (row maps built in Python by npsfuse._prepare): give tokenizer_source, tokenizer: or chat_template instead")
	}
	p := planPrepare(cfg)
	if !p.needed() || (e.Python == "" && len(p.refs) == 0 && p.baseOnly) {
		return nil, nil
	}
	return p, nil
}

// checkTargets checks what the config's features need of the output: a
// slices merge or a merged tokenizer writes a checkpoint.
func checkTargets(s *mergeSpec, slices, vocab bool) error {
	if slices && s.OutDir == "" {
		return invalid("a slices merge writes a checkpoint folder: give out_dir")
	}
	if vocab && s.OutDir == "" {
		return invalid("config: a merged tokenizer (tokenizer_source, tokenizer:, chat_template) is written with a checkpoint: give out_dir")
	}
	return nil
}

// checkStreamInputs refuses Arrow tensor files as inputs of an out_dir
// merge.
func checkStreamInputs(s *mergeSpec, paths []string) error {
	if s.OutDir == "" {
		return nil
	}
	for _, p := range paths {
		if tensors.IsIPCPath(p) {
			return invalid("%s is an Arrow tensor file: out_dir merges read checkpoint folders and .safetensors files; drop out_dir to get the merged tensors instead", p)
		}
	}
	return nil
}

// what is what a merge spec asks: a mergekit-moe or multi job (kind
// "moe" or "multi"), or a merge of s.Config, which Python prepares first
// when prep is not nil.
func (s *mergeSpec) what(e *Env) (kind string, prep *prepPlan, err error) {
	if kind, err = mergekitKind(s); err != nil || kind != "" {
		return kind, nil, err
	}
	if s.Config == nil {
		return "", nil, invalid("config is missing (a mergekit-style mapping: merge_method, base_model, models)")
	}
	prep, err = e.preparation(s.Config)
	return "", prep, err
}

// check validates a merge spec at submit time.
func (s *mergeSpec) check(e *Env) error {
	kind, prep, err := s.what(e)
	if err != nil {
		return err
	} else if kind != "" {
		return checkMergekit(e, s, kind)
	}
	var paths []string
	if prep != nil {
		// Python runs when the job runs (submit reads no data): its inputs
		// are checked now, the prepared config then.
		if _, err := e.checkPrepare(prep); err != nil {
			return err
		}
		if err := checkTargets(s, s.Config["slices"] != nil, prep.tokenizer != ""); err != nil {
			return err
		}
	} else {
		cfg, ps, err := resolveMerge(e, s, "")
		if err != nil {
			return err
		}
		if err := checkTargets(s, len(cfg.Slices) > 0, cfg.Vocab != nil); err != nil {
			return err
		}
		paths = ps
	}
	if s.DType != "" {
		if _, err := tensor.ParseDType(s.DType); err != nil {
			return invalid("dtype: %v", err)
		}
	}
	if s.ShardSize < 0 {
		return invalid("shard_size must be positive")
	}
	if s.OutDir != "" {
		if s.Result.Shm {
			return invalid("result.shm and out_dir exclude each other: out_dir writes a checkpoint folder")
		}
		if _, err := e.OutputPath(s.OutDir, "out_dir"); err != nil {
			return err
		}
		if err := checkStreamInputs(s, paths); err != nil {
			return err
		}
	} else if s.ShardSize != 0 || s.Force {
		return invalid("shard_size and force apply to out_dir merges only")
	}
	if err := s.Result.check(e); err != nil {
		return err
	}
	return e.CheckCleanup(s.Cleanup)
}

func runMerge(rc *runCtx, s *mergeSpec) (any, Session, error) {
	kind, prep, err := s.what(rc.env)
	if err != nil {
		return nil, nil, err
	} else if kind != "" {
		res, err := runMergekit(rc, s, kind)
		return res, nil, err
	}
	scratch := ""
	if prep != nil {
		cache, err := rc.env.checkPrepare(prep)
		if err != nil {
			return nil, nil, err
		}
		// An earlier attempt's scratch (a crash) goes first; this one's
		// when the job ends, however it ends.
		var done func()
		if scratch, done, err = newScratch(rc); err != nil {
			return nil, nil, err
		}
		defer done()
		release, err := rc.reserve(prepMemory(prep, cache), "preparing this merge's config in Python")
		if err != nil {
			return nil, nil, err
		}
		rc.progress(store.Progress{Message: "preparing the config in Python (" + prep.reason() + ")"})
		s.Config, err = rc.env.runPrepare(rc.ctx, s.Config, scratch, cache)
		release()
		if err != nil {
			return nil, nil, err
		}
	}
	cfg, paths, err := resolveMerge(rc.env, s, scratch)
	if err != nil {
		return nil, nil, err
	}
	if err := checkTargets(s, len(cfg.Slices) > 0, cfg.Vocab != nil); err != nil {
		return nil, nil, err
	}
	if err := checkStreamInputs(s, paths); err != nil {
		return nil, nil, err
	}
	if s.OutDir != "" {
		res, err := runStreamMerge(rc, cfg, s)
		return res, nil, err
	}
	res, err := runTensorMerge(rc, cfg, s)
	return res, nil, err
}

// runStreamMerge merges checkpoint to checkpoint into out_dir.
func runStreamMerge(rc *runCtx, cfg *stream.Config, s *mergeSpec) (any, error) {
	out, err := rc.env.OutputPath(s.OutDir, "out_dir")
	if err != nil {
		return nil, err
	}
	force, prev := resumeOutput(rc, out, s.Force)
	base := cfg.BaseModel
	if base == "" {
		base = cfg.Models[0].Path
	}
	largest, err := largestTensor(base)
	if err != nil {
		return nil, err
	}
	release, err := rc.reserve(4*largest, "this merge")
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := stream.Run(rc.ctx, cfg, stream.Options{OutDir: out, ShardSize: s.ShardSize, DType: s.DType,
		AllowMissing: s.AllowMissing, Force: force, Threads: rc.env.Pool.Threads,
		OnProgress: func(done, total int64) {
			rc.progress(store.Progress{Done: done, Total: total, Unit: "tensors"})
		},
		OnOutput:      func(tmp string) error { return markOutput(rc, tmp, prev) },
		ReserveMemory: rc.reserve})
	if err != nil {
		return nil, err
	}
	return map[string]any{"kind": "checkpoint", "out_dir": res.OutDir, "tensors": res.Tensors, "shards": res.Shards,
		"bytes_read": res.BytesRead, "bytes_written": res.BytesWritten, "seconds": res.Seconds, "notes": res.Notes}, nil
}

func largestTensor(path string) (int64, error) {
	src, err := tensors.Open(path)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	var n int64
	for _, m := range sourceMetas(src) {
		n = max(n, m.Bytes())
	}
	return n, nil
}

// planned is one output tensor of an in-memory merge: merged by the
// Merger (merged ≥ 0) or copied from the base (converted when conv ≠ 0).
type planned struct {
	meta   tensors.Meta
	merged int
	from   []byte
	conv   tensor.DType
}

// planMerge matches the models with the base (gocore/plan: the rule of
// every door), compares their integer tensors with the base's, and lays
// the output out in the base's order; merged tensors are in name order.
//
// reserve is called once the plan holds, before any aligned copy is made,
// with the largest output tensor's bytes, the bytes of misaligned inputs
// that will be copied, and the output's total bytes.
func planMerge(cfg *stream.Config, s *mergeSpec, base tensors.Source, models []tensors.Source, reserve func(largest, copies, total int64) error) ([]planned, []merge.Tensor, []string, error) {
	opt := plan.Options{Transposed: cfg.Transposed, AllowMissing: s.AllowMissing, MissingOption: "allow_missing", NoBase: cfg.BaseModel == ""}
	for _, d := range []string{s.DType, cfg.OutDType, cfg.DType} {
		if d != "" {
			dt, err := tensor.ParseDType(d)
			if err != nil {
				return nil, nil, nil, invalid("dtype: %v", err)
			}
			opt.OutDType = tensors.FromKernel(dt).String()
			break
		}
	}
	dir := base.Path()
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		dir = filepath.Dir(dir)
	}
	opt.ModelType = checkpoint.ModelType(dir)
	p, err := planSources(base, models, opt, stream.ErrInput)
	if err != nil {
		return nil, nil, nil, err
	}
	srcs := append([]tensors.Source{base}, models...)
	var largest, copies, total int64
	for _, e := range p.Entries {
		dt, _ := safetensors.ParseDType(e.DType)
		n, _ := safetensors.ByteSize(dt, e.Shape)
		largest, total = max(largest, n), total+n
	}
	for _, e := range p.Merged() {
		for _, src := range srcs {
			meta, _ := src.Meta(e.Name)
			b, err := src.Bytes(e.Name)
			if err != nil {
				return nil, nil, nil, err
			}
			if tensor.Misaligned(b, mustKernel(meta)) {
				copies += int64(len(b))
			}
		}
	}
	if err := reserve(largest, copies, total); err != nil {
		return nil, nil, nil, err
	}
	var mts []merge.Tensor
	for _, e := range p.Merged() {
		t := merge.Tensor{Name: e.Name, Transposed: e.Transposed}
		for i, src := range srcs {
			meta, _ := src.Meta(e.Name)
			b, err := src.Bytes(e.Name)
			if err != nil {
				return nil, nil, nil, err
			}
			v, err := tensor.FromBytesAligned(b, mustKernel(meta))
			if err != nil {
				return nil, nil, nil, fmt.Errorf("%w: tensor %q of %s: %v", stream.ErrInput, e.Name, src.Path(), err)
			}
			if i == 0 {
				t.Shape, t.Base = meta.IntShape(), v
			} else {
				t.Models = append(t.Models, v)
			}
		}
		mts = append(mts, t)
	}
	var out []planned
	for _, e := range p.InBaseOrder() {
		bm, _ := base.Meta(e.Name)
		dt, _ := safetensors.ParseDType(e.DType)
		pl := planned{meta: tensors.Meta{Name: e.Name, DType: dt, Shape: bm.Shape}, merged: e.Merged}
		if e.Action == plan.Copy {
			if pl.from, err = base.Bytes(e.Name); err != nil {
				return nil, nil, nil, err
			}
			if dt != bm.DType {
				pl.conv = mustKernel(bm)
			}
		}
		out = append(out, pl)
	}
	return out, mts, p.Notes, nil
}

// planSources matches the models with the base by the planner's rule
// (gocore/plan, as for every door), integer tensors compared with the
// base's by value; the plan's problems are an error wrapping errInput.
func planSources(base tensors.Source, models []tensors.Source, opt plan.Options, errInput error) (*plan.Plan, error) {
	inputs := make([]plan.Input, len(models))
	for i, m := range models {
		inputs[i] = sourceInput(m)
	}
	p, err := plan.Make(sourceInput(base), inputs, opt)
	if err != nil {
		return nil, err
	}
	if err := p.Verify(func(name string, i int) (bool, error) {
		bb, err := base.Bytes(name)
		if err != nil {
			return false, err
		}
		mb, err := models[i].Bytes(name)
		return bytes.Equal(mb, bb), err
	}); err != nil {
		return nil, err
	}
	if len(p.Problems) > 0 {
		return nil, fmt.Errorf("%w: %s", errInput, p.Message())
	}
	return p, nil
}

// sourceInput is a tensor source's list for the planner.
func sourceInput(src tensors.Source) plan.Input {
	in := plan.Input{Where: src.Path()}
	for _, m := range sourceMetas(src) {
		in.Tensors = append(in.Tensors, plan.Tensor{Name: m.Name, DType: m.DType.String(), Shape: m.Shape})
	}
	return in
}

// runTensorMerge merges into a tensor file written straight from the
// kernels: each merged tensor is computed into its place in the mapped
// output file.
func runTensorMerge(rc *runCtx, cfg *stream.Config, s *mergeSpec) (any, error) {
	start := time.Now()
	basePath := cfg.BaseModel
	if basePath == "" {
		basePath = cfg.Models[0].Path
	}
	var srcs []tensors.Source
	defer func() { _ = tensors.CloseAll(srcs...) }()
	base, err := rc.env.openSource(basePath)
	if err != nil {
		return nil, err
	}
	srcs = append(srcs, base)
	models := make([]tensors.Source, len(cfg.Models))
	for i, m := range cfg.Models {
		if models[i], err = rc.env.openSource(m.Path); err != nil {
			return nil, err
		}
		srcs = append(srcs, models[i])
	}
	var release func()
	defer func() {
		if release != nil {
			release()
		}
	}()
	// The reservation is taken before the aligned copies are made: the
	// working memory, the copies of misaligned inputs, and a shared-memory
	// result (RAM), which stays held after the job until it is released.
	var resultBytes int64
	plan, mts, notes, err := planMerge(cfg, s, base, models, func(largest, copies, total int64) error {
		need := 2*largest + copies
		if s.Result.Shm {
			resultBytes = total
			need += total
		}
		var err error
		release, err = rc.reserve(need, "this merge")
		return err
	})
	if err != nil {
		return nil, err
	}
	var merger *merge.Merger
	if len(mts) > 0 {
		params, stats, perr := cfg.EngineParams(mts)
		if perr != nil {
			return nil, perr
		}
		params.Pool = rc.env.Pool
		defer stats.Close()
		notes = append(notes, stats.Notes...)
		if merger, err = merge.NewMerger(cfg.Method, params, mts); err != nil {
			return nil, err
		}
	}
	metas := make([]tensors.Meta, len(plan))
	for i, p := range plan {
		metas[i] = p.meta
	}
	res, err := writeTensorResult(rc, s.Result, metas, func(i int, dst []byte) error {
		p := plan[i]
		switch {
		case p.merged >= 0:
			out, err := tensor.FromBytes(dst, mustKernel(p.meta))
			if err != nil {
				return err
			}
			if err := merger.Tensor(p.merged, out); err != nil {
				return fmt.Errorf("%w (base = %s)", err, basePath)
			}
		case p.conv != 0:
			return convert(dst, mustKernel(p.meta), p.from, p.conv)
		default:
			copy(dst, p.from)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.Result.Shm {
		rc.r.budget.Hold(res["path"].(string), resultBytes)
	}
	res["notes"] = append(append([]string(nil), cfg.Notes...), notes...)
	res["method"] = cfg.Method
	res["seconds"] = time.Since(start).Seconds()
	return res, nil
}

func mustKernel(m tensors.Meta) tensor.DType {
	d, ok := tensors.KernelDType(m.DType)
	if !ok {
		panic(fmt.Sprintf("jobs: %v is not a kernel dtype", m.DType))
	}
	return d
}

// convert rounds src (dtype from) into dst (dtype to), chunk by chunk.
func convert(dst []byte, to tensor.DType, src []byte, from tensor.DType) error {
	sv, err := tensor.FromBytesAligned(src, from)
	if err != nil {
		return err
	}
	dv, err := tensor.FromBytes(dst, to)
	if err != nil {
		return err
	}
	tensor.Convert(dv, sv)
	return nil
}

// writeTensorResult writes a job's tensor result file: fill computes
// tensor i into dst, between cancellation checks, with progress per
// tensor. It returns the result description.
func writeTensorResult(rc *runCtx, out resultSpec, metas []tensors.Meta, fill func(i int, dst []byte) error) (map[string]any, error) {
	shm := out.Shm
	path, err := rc.env.ResultPath(rc.job.ID, rc.job.Attempts, shm)
	if err != nil {
		return nil, err
	}
	var total int64
	for _, m := range metas {
		total += m.Bytes()
	}
	var done int64
	size, slab, err := rc.env.WriteResult(path, out.Recycle, metas, func(i int, dst []byte) error {
		if err := context.Cause(rc.ctx); err != nil {
			return fmt.Errorf("stopped: %w", err)
		}
		if err := fill(i, dst); err != nil {
			return err
		}
		done += metas[i].Bytes()
		rc.progress(store.Progress{Done: int64(i + 1), Total: int64(len(metas)), Unit: "tensors",
			Message: fmt.Sprintf("%d of %d bytes", done, total)})
		return nil
	}, rc.env.Durable && !shm)
	if err != nil {
		return nil, err
	}
	if shm && rc.env.BytesOut != nil {
		rc.env.BytesOut("shm", total)
	}
	res := map[string]any{"kind": "tensors", "format": "arrow", "path": path, "shm": shm,
		"tensors": len(metas), "bytes": total, "file_bytes": size}
	if slab != "" {
		res["slab"] = slab
	}
	return res, nil
}
