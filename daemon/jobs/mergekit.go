package jobs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// mergekit's other commands in the merge job: a mergekit-moe config (a
// config with experts:) and mergekit-multi's named documents (the spec's
// configs). Their one implementation is npsfuse's Python (npsfuse.moe and
// npsfuse.multi_merge, which `npsfuse moe` and `npsfuse multi` run), which
// the daemon runs as `PYTHON -m npsfuse._mergekit_job SCRATCH` (Env.Python;
// the protocol of npsfuse._prepare: runPython) with the machinery of the
// preparation step: every path the documents name is checked against the
// data roots before Python runs (the Hugging Face cache too, for a multi
// document's Hub ids), the memory is reserved from the budget, Python dies
// with the daemon, and the job's scratch folder is removed when it ends.
//
// The output is the merge job's: Python writes into a folder inside the
// temporary folder that checkpoint.NewOutput makes beside out_dir (so
// out_dir's force rule, the job checkpoint's ownership mark and a retry's
// clean-up are the stream merge's), and the daemon renames it into place.
// A multi file's named merges go to intermediate_dir/NAME (kept; lazy: an
// existing one is not redone), or without intermediate_dir into the job's
// scratch folder (removed with it).

// mergekitKind is "moe" for a mergekit-moe config (experts:, no
// merge_method), "multi" for the spec's configs, "" for a merge config.
func mergekitKind(s *mergeSpec) (string, error) {
	if s.Configs != nil {
		if s.Config != nil {
			return "", invalid("config and configs exclude each other: configs holds the documents of a mergekit-multi file, config one merge")
		}
		return "multi", nil
	}
	if s.Config != nil {
		_, experts := s.Config["experts"]
		_, method := s.Config["merge_method"]
		if experts && !method {
			return "moe", nil
		}
	}
	switch {
	case s.IntermediateDir != "" || s.Lazy != nil:
		return "", invalid("intermediate_dir and lazy apply to mergekit-multi documents (configs) only")
	case s.Seed != nil || s.AllowAllSame || s.CopyTokenizer != nil:
		return "", invalid("seed, allow_all_same and copy_tokenizer apply to mergekit-moe configs (experts:) only; a merge's seed is the config's seed key")
	}
	return "", nil
}

// pyMerge is a moe or multi merge job, planned.
type pyMerge struct {
	kind  string      // "moe" or "multi"
	refs  [][2]string // (where, reference) of every input Python reads
	names map[string]bool
	final bool   // multi: a document without name (the final merge)
	out   string // out_dir, resolved ("" for a multi file without final merge)
	inter string // intermediate_dir, resolved ("" = the job's scratch folder)
	cache string // the Hugging Face cache Python reads Hub ids from ("" = none)
}

// what names the job's kind in messages.
func (p *pyMerge) what() string {
	if p.kind == "moe" {
		return "building the mixture of experts"
	}
	return "running the mergekit-multi merges"
}

// moeRefs lists a mergekit-moe config's model references: base_model and
// experts[].source_model (a reference that is no string is refused: Python
// would read it as a path).
func moeRefs(cfg map[string]any) ([][2]string, error) {
	var out [][2]string
	add := func(v any, where string) error {
		switch r := v.(type) {
		case nil:
			return nil // missing: Python lists it with the config's other problems
		case string:
			out = append(out, [2]string{where, r})
			return nil
		}
		return invalid("%s must be a path, not %v", where, v)
	}
	if err := add(cfg["base_model"], "base_model"); err != nil {
		return nil, err
	}
	if list, ok := cfg["experts"].([]any); ok {
		for i, item := range list {
			if e, ok := item.(map[string]any); ok {
				if err := add(e["source_model"], fmt.Sprintf("experts[%d].source_model", i)); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

// checkDocName checks a multi document's name: a non-empty string that is
// one path element (the merge is written to intermediate_dir/NAME).
func checkDocName(v any, i int) (string, error) {
	name, ok := v.(string)
	if !ok || name == "" {
		return "", invalid("configs[%d].name must be a non-empty string, not %v", i, v)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") {
		return "", invalid("configs[%d].name %q must be a plain name (its merge is written to intermediate_dir/NAME)", i, name)
	}
	return name, nil
}

// multiRefs checks the documents of a mergekit-multi file (names, at most
// one unnamed final merge) and lists their model references, as
// configs[i].WHERE; a reference to a named merge (NAME, NAME+LORA: its
// output) is kept, checkPythonRefs skips the name.
func multiRefs(docs []map[string]any) (refs [][2]string, names map[string]bool, final bool, err error) {
	if len(docs) == 0 {
		return nil, nil, false, invalid("configs is empty: give the documents of a mergekit-multi file")
	}
	names = map[string]bool{}
	for i, d := range docs {
		if d == nil {
			return nil, nil, false, invalid("configs[%d] must be a merge config (a mapping)", i)
		}
		if _, ok := d["npsfuse_vocabulary"]; ok {
			return nil, nil, false, invalid("configs[%d]: npsfuse_vocabulary is the internal key of npsfuse's tokenizer merge: give tokenizer_source, tokenizer: or chat_template instead", i)
		}
		if v, ok := d["name"]; ok {
			name, err := checkDocName(v, i)
			if err != nil {
				return nil, nil, false, err
			}
			if names[name] {
				return nil, nil, false, invalid("configs[%d]: duplicate merge name %q", i, name)
			}
			names[name] = true
		} else {
			if final {
				return nil, nil, false, invalid("configs[%d]: more than one document without a name (only the final merge may be unnamed)", i)
			}
			final = true
		}
		for _, r := range docRefs(d) {
			refs = append(refs, [2]string{fmt.Sprintf("configs[%d].%s", i, r[0]), r[1]})
		}
	}
	return refs, names, final, nil
}

// docRefs lists every path a merge config names: its model references
// (modelRefs), the slices' base_model, and the data-aware methods'
// statistics files.
func docRefs(cfg map[string]any) [][2]string {
	out := modelRefs(cfg)
	for _, r := range refsAt(cfg, "models[].parameters.statistics", "slices[].base_model") {
		if r[1] != "" || strings.HasSuffix(r[0], ".statistics") { // an empty statistics is named (checkPythonRefs)
			out = append(out, r)
		}
	}
	return out
}

// checkPythonRefs checks, before Python runs, every reference it will
// read: an absolute path inside the data roots whose folder's entries all
// resolve inside them (checkPythonInput), or, where hub is set, a Hugging
// Face Hub id read from a cache inside the data roots; MODEL+LORA's parts
// each so. A reference whose first part is one of names (a multi file's
// named merge) is the output of that merge and is not checked. It returns
// the cache ("" when no Hub id is named).
func (e *Env) checkPythonRefs(refs [][2]string, names map[string]bool, hub bool) (string, error) {
	cache := ""
	for _, wr := range refs {
		where, ref := wr[0], wr[1]
		if ref == "" {
			return "", invalid("%s is empty", where)
		}
		parts := []string{ref}
		if _, err := os.Stat(ref); (err != nil || !filepath.IsAbs(ref)) && strings.Contains(ref, "+") && hub {
			parts = strings.Split(ref, "+")
		}
		for i, part := range parts {
			switch {
			case i == 0 && names[part]:
				continue
			case strings.HasPrefix(part, UploadRef):
				return "", invalid("%s %q: an upload is a tensor file, which npsfuse's Python does not read here: give checkpoint folders", where, ref)
			case hub && isHubID(part):
				if cache == "" {
					var err error
					if cache, err = e.hubCache(where, ref); err != nil {
						return "", err
					}
				}
				continue
			case !filepath.IsAbs(part):
				also := ""
				if hub {
					also = ", a Hugging Face Hub id (org/name[@revision])"
				}
				if names != nil {
					also += " or the name of another document"
				}
				return "", invalid("%s %q: %q must be an absolute path (the daemon has no working directory of yours)%s", where, ref, part, also)
			}
			if err := e.checkPythonInput(part, where); err != nil {
				return "", err
			}
		}
	}
	return cache, nil
}

// planMergekit checks a moe or multi merge spec (at submit, and again when
// the job runs, before Python starts).
func (e *Env) planMergekit(s *mergeSpec, kind string) (*pyMerge, error) {
	p := &pyMerge{kind: kind}
	tool := map[string]string{"moe": "a mergekit-moe config (experts:)", "multi": "a mergekit-multi file (configs)"}[kind]
	if e.Python == "" {
		cmd := "`npsfuse moe CONFIG OUT_DIR`"
		if kind == "multi" {
			cmd = "`npsfuse multi CONFIG -I DIR --out-path OUT`"
		}
		return nil, invalid("config: this is %s, which npsfuse runs in Python (npsfuse._mergekit_job, as %s does), and this daemon has no Python: set python in its configuration (NPSFUSE_PYTHON, --python) to an interpreter with npsfuse installed, or run it with %s", tool, cmd, cmd)
	}
	if s.Result != (resultSpec{}) {
		return nil, invalid("result: %s writes checkpoint folders, never a tensor result", tool)
	}
	var err error
	switch kind {
	case "moe":
		if s.DType != "" || s.AllowMissing {
			return nil, invalid("dtype and allow_missing apply to merges: a mergekit-moe config gives its dtype: itself")
		}
		if s.OutDir == "" {
			return nil, invalid("a mergekit-moe config writes a checkpoint folder: give out_dir")
		}
		if p.refs, err = moeRefs(s.Config); err != nil {
			return nil, err
		}
	case "multi":
		if p.refs, p.names, p.final, err = multiRefs(s.Configs); err != nil {
			return nil, err
		}
		if p.final && s.OutDir == "" {
			return nil, invalid("configs has an unnamed (final) merge: give out_dir for it")
		}
		if !p.final && s.OutDir != "" {
			return nil, invalid("configs has no unnamed (final) merge, so out_dir has nothing to hold: drop it (the named merges go to intermediate_dir)")
		}
		if !p.final && s.IntermediateDir == "" {
			return nil, invalid("configs has no unnamed (final) merge: give intermediate_dir, where the named merges are written")
		}
		if s.IntermediateDir != "" {
			if p.inter, err = e.OutputPath(s.IntermediateDir, "intermediate_dir"); err != nil {
				return nil, err
			}
		}
	}
	if s.ShardSize < 0 {
		return nil, invalid("shard_size must be positive")
	}
	if s.OutDir != "" {
		if p.out, err = e.OutputPath(s.OutDir, "out_dir"); err != nil {
			return nil, err
		}
		if p.inter != "" && (within(p.out, p.inter) || within(p.inter, p.out)) {
			return nil, invalid("out_dir %s and intermediate_dir %s must not hold one another", s.OutDir, s.IntermediateDir)
		}
	}
	if p.cache, err = e.checkPythonRefs(p.refs, p.names, kind == "multi"); err != nil {
		return nil, err
	}
	return p, nil
}

// request is the request npsfuse._mergekit_job reads (out: the folder
// Python writes the output into, "" for none).
func (p *pyMerge) request(e *Env, s *mergeSpec, out string) map[string]any {
	req := map[string]any{"mode": p.kind}
	if out != "" {
		req["out_dir"] = out
	}
	if p.kind == "moe" {
		req["config"] = s.Config
		if s.Seed != nil {
			req["seed"] = *s.Seed
		}
		req["allow_all_same"] = s.AllowAllSame
		req["copy_tokenizer"] = s.CopyTokenizer == nil || *s.CopyTokenizer
		if s.ShardSize > 0 {
			req["shard_size"] = s.ShardSize
		}
		return req
	}
	req["configs"] = s.Configs
	if p.inter != "" {
		req["intermediate_dir"] = p.inter
	}
	req["lazy"] = s.Lazy == nil || *s.Lazy
	opts := map[string]any{"allow_missing": s.AllowMissing, "force": s.Force}
	if s.ShardSize > 0 {
		opts["shard_size"] = s.ShardSize
	}
	if s.DType != "" {
		opts["dtype"] = s.DType
	}
	if e.Pool.Threads > 0 {
		opts["threads"] = e.Pool.Threads
	}
	req["options"] = opts
	return req
}

// memory estimates what Python holds. moe: the output shard it builds
// and serialises (two copies of at most shard_size bytes; the output is
// at most the inputs' weights), and for the hidden-state gate modes the
// base model it runs. multi: a stream merge's working set (four of the
// largest input tensor, as runStreamMerge) plus what preparing a
// document's MODEL+LORA inputs holds (prepMemory). The interpreter's own
// memory is not counted.
func (p *pyMerge) memory(s *mergeSpec) int64 {
	if p.kind == "moe" {
		var total int64
		for _, r := range p.refs {
			_, n := weightsSizes(r[1])
			total += n
		}
		shard := s.ShardSize
		if shard <= 0 {
			shard = 5_000_000_000 // npsfuse moe's default
		}
		need := 2 * min(shard, total)
		mode, _ := s.Config["gate_mode"].(string)
		if mode == "" || strings.HasPrefix(mode, "hidden") {
			if base, ok := s.Config["base_model"].(string); ok {
				_, n := weightsSizes(base)
				need += n
			}
		}
		return need
	}
	var largest, prep int64
	for _, r := range p.refs {
		if filepath.IsAbs(r[1]) {
			if n, err := largestTensor(r[1]); err == nil {
				largest = max(largest, n)
			}
		}
	}
	for _, d := range s.Configs {
		prep = max(prep, prepMemory(planPrepare(d), p.cache))
	}
	return 4*largest + prep
}

// checkMergekit is checkMerge for a moe or multi spec.
func checkMergekit(e *Env, s *mergeSpec, kind string) error {
	if _, err := e.planMergekit(s, kind); err != nil {
		return err
	}
	return e.CheckCleanup(s.Cleanup)
}

// newScratch makes the job's scratch folder, an earlier attempt's removed
// first; done removes it.
func newScratch(rc *runCtx) (scratch string, done func(), err error) {
	scratch = rc.env.jobScratch(rc.job.ID)
	if scratch == "" || !filepath.IsAbs(scratch) {
		return "", nil, fault.Errorf(fault.Internal, "the daemon has no state folder for the job's scratch")
	}
	if err := os.RemoveAll(scratch); err != nil {
		return "", nil, fmt.Errorf("removing an earlier attempt's scratch folder: %w", err)
	}
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return "", nil, fmt.Errorf("job scratch folder: %w", err)
	}
	return scratch, func() {
		if err := os.RemoveAll(scratch); err != nil {
			rc.log.Warn("cannot remove the job's scratch folder", "path", scratch, "error", err)
		}
	}, nil
}

// runMergekit runs a moe or multi merge job.
func runMergekit(rc *runCtx, s *mergeSpec, kind string) (any, error) {
	p, err := rc.env.planMergekit(s, kind)
	if err != nil {
		return nil, err
	}
	scratch, done, err := newScratch(rc)
	if err != nil {
		return nil, err
	}
	defer done()
	var out *checkpoint.Output
	target := "" // where Python writes the final output
	if p.out != "" {
		force, prev := resumeOutput(rc, p.out, s.Force)
		if out, err = checkpoint.NewOutput(p.out, force); err != nil {
			return nil, err
		}
		defer out.Abort()
		if err := markOutput(rc, out.Dir(), prev); err != nil {
			return nil, err
		}
		target = filepath.Join(out.Dir(), "output")
	}
	release, err := rc.reserve(p.memory(s), p.what()+" in Python")
	if err != nil {
		return nil, err
	}
	defer release()
	rc.progress(store.Progress{Message: p.what() + " in Python (npsfuse._mergekit_job)"})
	var answer struct {
		Result struct {
			Outputs map[string]string `json:"outputs"`
		} `json:"result"`
	}
	call := pythonCall{module: "npsfuse._mergekit_job", doing: p.what(),
		progress: func(m string) { rc.progress(store.Progress{Message: m}) }}
	if err := rc.env.runPython(rc.ctx, call, p.request(rc.env, s, target), scratch, p.cache, &answer); err != nil {
		return nil, err
	}
	res := map[string]any{"kind": "checkpoint"}
	if out != nil {
		if err := hoist(target, out.Dir()); err != nil {
			return nil, err
		}
		if err := out.Commit(); err != nil {
			return nil, err
		}
		res["out_dir"] = p.out
	} else {
		res["kind"] = "checkpoints"
	}
	if kind == "multi" {
		// The named merges kept in intermediate_dir (those in the
		// scratch folder are gone with it), and the final one.
		outputs := map[string]any{}
		for name, path := range answer.Result.Outputs {
			switch {
			case name == "final" && p.final:
				outputs[name] = p.out
			case p.inter != "":
				outputs[name] = path
			}
		}
		res["outputs"] = outputs
	}
	rc.progress(store.Progress{Message: "done " + p.what()})
	return res, nil
}

// hoist moves the entries of folder src (Python's output) into dst (the
// output's temporary folder, which the commit renames into place) and
// removes src.
func hoist(src, dst string) error {
	entries, err := os.ReadDir(src)
	if errors.Is(err, fs.ErrNotExist) {
		return fault.Errorf(fault.Internal, "npsfuse's Python wrote no output into %s", src)
	} else if err != nil {
		return err
	}
	for _, ent := range entries { // in name order (os.ReadDir)
		n := ent.Name()
		if _, err := os.Lstat(filepath.Join(dst, n)); err == nil {
			return fault.Errorf(fault.Internal, "output file %s collides with the output folder's own %s", n, filepath.Join(dst, n))
		}
		if err := os.Rename(filepath.Join(src, n), filepath.Join(dst, n)); err != nil {
			return err
		}
	}
	return os.Remove(src)
}
