package stream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/plan"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// ErrInput marks checkpoints that do not fit together (missing tensors,
// shape mismatches, unsupported dtypes); messages name file and tensor.
var ErrInput = fault.New(fault.InvalidInput, "invalid merge input")

// Options are the command line's knobs.
type Options struct {
	OutDir       string
	ShardSize    int64  // bytes per output shard; ≤ 0: 5 GB
	Threads      int    // kernel goroutines of this run; ≤ 0: the process default (all cores)
	DType        string // output dtype override (--dtype)
	AllowMissing bool   // keep the base's tensor where a model lacks one
	// ReadAhead bounds how many input bytes are read ahead of the tensor
	// being merged (into the page cache, not the resident set); ≤ 0: 512 MiB.
	ReadAhead int64
	Force     bool // replace a non-empty OutDir
	// Progress receives a progress line now and then (nil: none).
	Progress io.Writer
	// OnProgress, when set, is called after each output tensor with the
	// number of tensors done and the total, on Run's goroutine (it should
	// return quickly). The daemon publishes job progress with it.
	OnProgress func(done, total int64)
	// OnOutput, when set, is called with the temporary folder the output
	// is written into (renamed to OutDir at the end) as soon as it exists,
	// before anything is written; an error stops the merge. The daemon
	// records it so that a retry after a crash removes only what this
	// run created.
	OnOutput func(tmpDir string) error
	// ReserveMemory, when set, is asked for the bytes of the direct
	// reader's ring (direct.go) before it is allocated, and the returned
	// function is called once the ring is freed; an error makes the merge
	// read its inputs through the mapping instead. The daemon passes its
	// memory budget.
	ReserveMemory func(n int64, what string) (release func(), err error)
}

// Result describes a finished merge.
type Result struct {
	OutDir       string         `json:"out_dir"`
	Tensors      int            `json:"tensors"`
	Shards       int            `json:"shards"`
	BytesRead    int64          `json:"bytes_read"`
	BytesWritten int64          `json:"bytes_written"`
	Seconds      float64        `json:"seconds"`
	Notes        []string       `json:"notes"`
	Report       map[string]any `json:"report,omitempty"`
	Timing       Timing         `json:"timing"`
}

// Timing splits a run's wall time by what the merge loop spent it on, in
// seconds. ReadWait + Merge + WriteWait + Finish + Plan ≈ Result.Seconds;
// Writer overlaps with the rest (the writer's own goroutine).
type Timing struct {
	Plan      float64 `json:"plan_s"`       // open and validate the inputs, plan tensors and shards
	ReadWait  float64 `json:"read_wait_s"`  // wait for input pages the read-ahead had not brought in yet
	Merge     float64 `json:"merge_s"`      // merge (or convert, copy) into the output buffers
	WriteWait float64 `json:"write_wait_s"` // wait for the writer: a free buffer or a queue slot
	Finish    float64 `json:"finish_s"`     // last writes and fsyncs, index, config files, rename
	Writer    float64 `json:"writer_s"`     // the writer goroutine's time writing and closing shards
	Sync      float64 `json:"sync_s"`       // of which closing shards: fsync, rename
}

// DefaultShardSize is mergekit's and transformers' 5 GB.
const DefaultShardSize = 5_000_000_000

// job is one output tensor: merged (inputs set) or copied from the base.
type job struct {
	info   safetensors.TensorInfo // output name, dtype, shape
	merged int                    // index in the Merger, or -1 for a copy
	copyOf []byte                 // base bytes to copy
	conv   tensor.DType           // copyOf's float dtype when it must be converted to info.DType, else 0
	inputs [][]byte               // the input bytes this job reads (slices of the mappings)
	read   int64                  // input bytes this job reads
	merger *merge.Merger          // the Merger of a merged tensor
	vocab  []*vocabBuf            // merged-vocabulary tensors it reads (vocabStage fills them)
	// spans are where inputs lie in their files (base first, then the
	// models), set when every input is a mapped tensor and nothing else
	// (no statistics): such a job may read them directly (direct.go).
	spans []inputSpan
}

// Run executes the merge described by cfg. It checks every input before
// writing anything; on any error or cancellation nothing is left at
// opt.OutDir.
func Run(ctx context.Context, cfg *Config, opt Options) (res *Result, err error) {
	// An input truncated while it is mapped (a checkpoint saved over
	// itself) is an error, not SIGBUS: the deferred cleanups of runPipeline
	// remove the partial output.
	err = parallel.Guard(func() error {
		res, err = runPipeline(ctx, cfg, opt)
		return err
	})
	return res, err
}

func runPipeline(ctx context.Context, cfg *Config, opt Options) (res *Result, err error) {
	start := time.Now()
	if opt.ShardSize <= 0 {
		opt.ShardSize = DefaultShardSize
	}
	basePath := cfg.BaseModel
	if basePath == "" { // linear without a base: the first model lays out the output
		basePath = cfg.Models[0].Path
	}
	if len(cfg.Slices) > 0 && cfg.BaseModel == "" { // config.json: the first slice's first source's
		basePath = cfg.Slices[0].Sources[0].Path
	}
	// A FIFO or device named like an input would block an open forever.
	if err := CheckInputFiles(cfg); err != nil {
		return nil, err
	}
	base, err := checkpoint.Open(basePath)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	models := make([]*checkpoint.Checkpoint, len(cfg.Models))
	for i, m := range cfg.Models {
		if models[i], err = checkpoint.Open(m.Path); err != nil {
			return nil, err
		}
		defer models[i].Close()
	}
	outDT, err := outputDType(cfg, opt)
	if err != nil {
		return nil, err
	}
	res = &Result{Notes: append([]string(nil), cfg.Notes...)}
	jobs, mergers, layers, stats, vp, err := planAll(cfg, opt, base, models, outDT, res)
	if err != nil {
		return nil, err
	}
	defer stats.Close()
	defer vp.close()
	vs := newVocabStage(jobs)
	infos := make([]safetensors.TensorInfo, len(jobs))
	for i, j := range jobs {
		infos[i] = j.info
	}
	shards := checkpoint.PlanShards(infos, opt.ShardSize)
	out, err := checkpoint.NewOutput(opt.OutDir, opt.Force)
	if err != nil {
		return nil, err
	}
	// Unconditional, so that a panic unwinding through runPipeline (a memory fault
	// that Guard turns into an error) removes the partial output too;
	// after Commit, Abort does nothing.
	defer out.Abort()
	if opt.OnOutput != nil {
		if err = opt.OnOutput(out.Dir()); err != nil {
			return nil, err
		}
	}
	w := newWriter(out.Dir(), shards, cfg, outDT)
	defer w.abort()
	dr := planDirect(jobs, opt.ReadAhead, opt.ReserveMemory)
	defer dr.close()
	inputs := make([][][]byte, len(jobs))
	for i, j := range jobs {
		if !dr.direct(i) {
			inputs[i] = j.inputs
		}
	}
	pf := newPrefetcher(inputs, opt.ReadAhead, 0, func(b []byte) { checkpoint.AdviseBytes(b, checkpoint.WillNeed) })
	defer pf.close()
	prog := newProgress(opt.Progress, len(jobs), totalBytes(infos))
	tm := &res.Timing
	tm.Plan = time.Since(start).Seconds()
	for i := range jobs {
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("merge cancelled: %w", cerr)
		}
		j := &jobs[i]
		t0 := time.Now()
		direct := dr.direct(i)
		var dv []tensor.Vec // the inputs the direct reader read
		copyOf := j.copyOf
		if direct {
			bufs, rerr := dr.wait(i)
			if rerr != nil {
				return nil, fmt.Errorf("tensor %q: %w", j.info.Name, rerr)
			}
			if j.merged >= 0 {
				if dv, err = dr.views(i, bufs, j.info.Name); err != nil {
					return nil, err
				}
			} else {
				copyOf = bufs[0]
			}
		} else {
			for _, b := range j.inputs {
				checkpoint.Populate(b)
			}
		}
		t1 := time.Now()
		buf := w.buffer(j.info.ByteLen())
		t2 := time.Now()
		if verr := vs.before(i); verr != nil {
			return nil, verr
		}
		if j.merged >= 0 {
			v, verr := tensor.FromBytes(buf, mustTensorDType(j.info.DType))
			if verr != nil {
				return nil, verr
			}
			var merr error
			if direct {
				merr = j.merger.TensorFrom(j.merged, v, dv[0], dv[1:])
				directJobs.Add(1)
			} else {
				merr = j.merger.Tensor(j.merged, v)
			}
			if merr != nil {
				return nil, fmt.Errorf("%w (%s)", merr, modelList(cfg))
			}
		} else if j.conv != 0 {
			if cerr := convert(buf, copyOf, j); cerr != nil {
				return nil, cerr
			}
		} else {
			copy(buf, copyOf)
		}
		if direct {
			dr.release(i)
		} else {
			for _, b := range j.inputs {
				checkpoint.Release(b)
			}
		}
		pf.release(i)
		vs.after(i)
		t3 := time.Now()
		if werr := w.put(j.info.Name, buf); werr != nil {
			return nil, werr
		}
		t4 := time.Now()
		tm.ReadWait += t1.Sub(t0).Seconds()
		tm.WriteWait += t2.Sub(t1).Seconds() + t4.Sub(t3).Seconds()
		tm.Merge += t3.Sub(t2).Seconds()
		res.BytesRead += j.read
		prog.step(j.info.ByteLen())
		if opt.OnProgress != nil {
			opt.OnProgress(int64(i+1), int64(len(jobs)))
		}
	}
	pf.close()
	tFinish := time.Now()
	if err = w.finish(); err != nil {
		return nil, err
	}
	if err = checkpoint.WriteIndex(out.Dir(), shards); err != nil {
		return nil, err
	}
	if err = checkpoint.CopyConfig(base.Dir, out.Dir(), configDType(outDT, jobs)); err != nil {
		return nil, err
	}
	if len(cfg.Slices) > 0 {
		if err = setLayerCount(out.Dir(), layers); err != nil {
			return nil, err
		}
	}
	if err = writeVocabFiles(out.Dir(), cfg.Vocab); err != nil {
		return nil, err
	}
	if err = writeCard(out.Dir(), cfg, outDT); err != nil {
		return nil, err
	}
	if cerr := ctx.Err(); cerr != nil { // a late cancel still leaves nothing behind
		return nil, fmt.Errorf("merge cancelled: %w", cerr)
	}
	if err = out.Commit(); err != nil {
		return nil, err
	}
	prog.done()
	res.OutDir = out.Final()
	res.Tensors = len(jobs)
	res.Shards = len(shards)
	res.BytesWritten = totalBytes(infos)
	end := time.Now()
	res.Seconds = end.Sub(start).Seconds()
	tm.Finish = end.Sub(tFinish).Seconds()
	tm.Writer = w.busy.Seconds()
	tm.Sync = w.sync.Seconds()
	res.Report = joinReports(mergers)
	return res, nil
}

// planJobs matches the checkpoints (gocore/plan, the rule of every door),
// compares the models' integer tensors with the base's, and lays out one
// job per output tensor, in tensor-name order.
func planJobs(cfg *Config, opt Options, base *checkpoint.Checkpoint, models []*checkpoint.Checkpoint,
	outDT tensor.DType, vp *vocabPlan, res *Result) ([]job, []merge.Tensor, error) {
	inputs := make([]plan.Input, len(models))
	for i, m := range models {
		inputs[i] = vp.planInput(m)
	}
	po := plan.Options{Transposed: cfg.Transposed, ModelType: checkpoint.ModelType(base.Dir),
		AllowMissing: opt.AllowMissing, MissingOption: "--allow-missing", NoBase: cfg.BaseModel == ""}
	if outDT != 0 {
		po.OutDType = checkpoint.FromKernel(outDT).String()
	}
	p, err := plan.Make(vp.planInput(base), inputs, po)
	if err != nil {
		return nil, nil, err
	}
	ms := make([]source, len(models))
	for i, m := range models {
		ms[i] = source{c: m, vocab: vp, set: -1}
	}
	return jobsOf(p, source{c: base, vocab: vp, set: -1}, ms, res)
}

// source is a checkpoint as a plan's input: from maps the plan's tensor
// names to the checkpoint's (nil: the same names).
type source struct {
	c    *checkpoint.Checkpoint
	from map[string]string
	// vocab, when set, gives the vocabulary tensors in the merged
	// vocabulary's rows (computed float32, not mapped: not in job inputs);
	// set picks their default rows (vocabKey) and where names the group
	// in messages.
	vocab *vocabPlan
	set   int
	where string
}

// name is the checkpoint's name of the plan's tensor name.
func (s source) name(n string) string {
	if s.from != nil {
		return s.from[n]
	}
	return n
}

func (s source) info(n string) (safetensors.TensorInfo, bool) {
	info, ok := s.c.Info(s.name(n))
	if ok && s.vocab.applies(s.c, s.name(n)) {
		info.Shape, info.DType = s.vocab.shape(info), safetensors.F32
		info.Begin, info.End = 0, info.NumElements()*4
	}
	return info, ok
}

func (s source) bytes(n string) ([]byte, error) {
	if b, err := s.buf(n); b != nil || err != nil {
		if err != nil {
			return nil, err
		}
		return b.mem, nil
	}
	return s.c.Bytes(s.name(n))
}

// buf is the merged-vocabulary buffer of tensor n (nil: not a vocabulary
// tensor, or no vocabulary).
func (s source) buf(n string) (*vocabBuf, error) {
	if !s.vocab.applies(s.c, s.name(n)) {
		return nil, nil
	}
	return s.vocab.buf(s.c, s.name(n), s.set, s.where)
}

// mapped reports whether the tensor's bytes are the checkpoint's mapping
// (read ahead and released like inputs).
func (s source) mapped(n string) bool { return !s.vocab.applies(s.c, s.name(n)) }
func (s source) file(n string) string { return s.c.File(s.name(n)) }

// span is where tensor n's bytes lie in its file, viewed as dtype (ok
// false: not a mapped tensor).
func (s source) span(n string, dtype tensor.DType) (inputSpan, bool) {
	if !s.mapped(n) {
		return inputSpan{}, false
	}
	path, off, ok := s.c.Location(s.name(n))
	info, ok2 := s.c.Info(s.name(n))
	if !ok || !ok2 {
		return inputSpan{}, false
	}
	return inputSpan{path: path, off: off, n: info.ByteLen(), dtype: dtype}, true
}

// jobsOf compares the models' integer tensors with the base's (the
// entries marked Verify) and lays out one job per entry of p, in p's
// order, named as p names them.
func jobsOf(p *plan.Plan, base source, models []source, res *Result) ([]job, []merge.Tensor, error) {
	_ = p.Verify(func(name string, i int) (bool, error) {
		bb, _ := base.bytes(name)
		mb, _ := models[i].bytes(name)
		return bytes.Equal(mb, bb), nil
	})
	if len(p.Problems) > 0 {
		return nil, nil, fmt.Errorf("%w: %s", ErrInput, p.Message())
	}
	res.Notes = append(res.Notes, p.Notes...)
	jobs := make([]job, 0, len(p.Entries))
	var tensors []merge.Tensor
	for _, e := range p.Entries {
		bi, _ := base.info(e.Name)
		bb, err := base.bytes(e.Name)
		if err != nil {
			return nil, nil, err
		}
		bi.Name = e.Name
		j := job{info: bi, merged: e.Merged, read: int64(len(bb))}
		if base.mapped(e.Name) {
			j.inputs = [][]byte{bb}
		} else if b, _ := base.buf(e.Name); b != nil {
			j.vocab = append(j.vocab, b)
		}
		odt, _ := safetensors.ParseDType(e.DType)
		if odt != bi.DType { // a float output in another dtype
			j.info.DType = odt
			j.info.Begin, j.info.End = 0, bi.NumElements()*int64(odt.Size())
		}
		if e.Action == plan.Copy {
			if sp, ok := base.span(e.Name, 0); ok {
				j.spans = []inputSpan{sp}
			}
			j.copyOf = bb
			if odt != bi.DType {
				j.conv, _ = checkpoint.KernelDType(bi.DType)
			}
			jobs = append(jobs, j)
			continue
		}
		bdt, _ := checkpoint.KernelDType(bi.DType)
		bv, err := vecOf(bb, bdt, base.file(e.Name), e.Name)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrInput, err)
		}
		sp, direct := base.span(e.Name, bdt)
		spans := []inputSpan{sp}
		t := merge.Tensor{Name: e.Name, Shape: make([]int, len(e.Shape)), Transposed: e.Transposed, Base: bv}
		for k, d := range e.Shape {
			t.Shape[k] = int(d)
		}
		for _, m := range models {
			mi, _ := m.info(e.Name)
			mdt, _ := checkpoint.KernelDType(mi.DType)
			mb, err := m.bytes(e.Name)
			if err != nil {
				return nil, nil, err
			}
			mv, err := vecOf(mb, mdt, m.file(e.Name), e.Name)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %v", ErrInput, err)
			}
			t.Models = append(t.Models, mv)
			msp, ok := m.span(e.Name, mdt)
			direct = direct && ok
			spans = append(spans, msp)
			if m.mapped(e.Name) {
				j.inputs = append(j.inputs, mb)
			} else if b, _ := m.buf(e.Name); b != nil {
				j.vocab = append(j.vocab, b)
			}
			j.read += int64(len(mb))
		}
		if direct {
			j.spans = spans
		}
		tensors = append(tensors, t)
		jobs = append(jobs, j)
	}
	return jobs, tensors, nil
}

// planInput is a checkpoint's tensor list for the planner.
func planInput(c *checkpoint.Checkpoint) plan.Input {
	in := plan.Input{Where: c.Path}
	for _, name := range c.Names() {
		info, _ := c.Info(name)
		in.Tensors = append(in.Tensors, plan.Tensor{Name: name, DType: info.DType.String(), Shape: info.Shape, File: c.File(name)})
	}
	return in
}

// convert writes from (j.copyOf's bytes, dtype j.conv) into buf (dtype
// j.info.DType), rounding to nearest even, one chunk at a time.
func convert(buf, from []byte, j *job) error {
	src, err := vecOf(from, j.conv, "the base", j.info.Name)
	if err != nil {
		return err
	}
	dst, err := tensor.FromBytes(buf, mustTensorDType(j.info.DType))
	if err != nil {
		return err
	}
	tensor.Convert(dst, src)
	return nil
}

// vecOf views a tensor's bytes; data a foreign writer left misaligned for
// its element type is copied once into aligned memory.
func vecOf(b []byte, dt tensor.DType, file, name string) (tensor.Vec, error) {
	if len(b)%dt.Size() != 0 {
		return tensor.Vec{}, fmt.Errorf("%s: tensor %q: %d bytes is not a whole number of %v elements", file, name, len(b), dt)
	}
	return tensor.FromBytesAligned(b, dt)
}

func totalBytes(infos []safetensors.TensorInfo) int64 {
	var n int64
	for _, t := range infos {
		n += t.ByteLen()
	}
	return n
}

func modelList(cfg *Config) string {
	parts := []string{"base = " + cfg.BaseModel}
	for i, m := range cfg.Models {
		parts = append(parts, fmt.Sprintf("model %d = %s", i, m.Path))
	}
	return strings.Join(parts, ", ")
}

// configDType is config.json's torch_dtype: the output dtype, or that of
// the first merged tensor when outputs keep the base's dtypes.
func configDType(outDT tensor.DType, jobs []job) string {
	if outDT != 0 {
		return outDT.String()
	}
	for _, j := range jobs {
		if j.merged >= 0 {
			return mustTensorDType(j.info.DType).String()
		}
	}
	return tensor.F32.String()
}

func outputDType(cfg *Config, opt Options) (tensor.DType, error) {
	for _, s := range []string{opt.DType, cfg.OutDType, cfg.DType} {
		if s != "" {
			return tensor.ParseDType(s)
		}
	}
	return 0, nil // decided per tensor below
}

// planAll plans the run's jobs and makes their Mergers: a slices merge's
// (planSlices, which also returns the output's layer count), or one
// Merger over every merged tensor of the models' merge (planJobs), with
// the data-aware methods' statistics read, prefetched and released like
// inputs (the caller closes them after the merge).
// The merged vocabulary's buffers (vocab.go) are reserved here: the
// caller closes the returned vocabPlan after the merge (on error, planAll
// does).
func planAll(cfg *Config, opt Options, base *checkpoint.Checkpoint, models []*checkpoint.Checkpoint,
	outDT tensor.DType, res *Result) (_ []job, _ []*merge.Merger, _ int, _ *Statistics, vp *vocabPlan, err error) {
	if vp, err = newVocabPlan(cfg, base, models); err != nil { // the merged vocabulary's row maps
		return nil, nil, 0, nil, nil, err
	}
	defer func() {
		if err != nil {
			vp.close()
		}
	}()
	if err := checkVocabSizes(cfg, base, models); err != nil {
		return nil, nil, 0, nil, nil, err
	}
	if len(cfg.Slices) > 0 {
		ck := opened{}
		for i, m := range cfg.Models {
			ck[m.Path] = models[i]
		}
		jobs, mergers, layers, err := planSlices(cfg, opt, ck, outDT, checkpoint.ModelType(base.Dir), vp, res)
		return jobs, mergers, layers, &Statistics{}, vp, err
	}
	jobs, tensors, err := planJobs(cfg, opt, base, models, outDT, vp, res)
	if err != nil {
		return nil, nil, 0, nil, nil, err
	}
	params, stats, err := cfg.EngineParams(tensors)
	if err != nil {
		return nil, nil, 0, nil, nil, err
	}
	params.Pool = parallel.Pool{Threads: opt.Threads} // travels with this run only
	res.Notes = append(res.Notes, stats.Notes...)
	merger, err := merge.NewMerger(cfg.Method, params, tensors)
	if err != nil {
		stats.Close()
		return nil, nil, 0, nil, nil, err
	}
	for i := range jobs { // statistics are read, prefetched and released like inputs
		if j := &jobs[i]; j.merged >= 0 {
			j.merger = merger
			if len(stats.Bytes[j.info.Name]) > 0 {
				j.spans = nil // the merger reads the statistics through the mapping
			}
			for _, b := range stats.Bytes[j.info.Name] {
				j.inputs = append(j.inputs, b)
				j.read += int64(len(b))
			}
		}
	}
	return jobs, []*merge.Merger{merger}, 0, stats, vp, nil
}
