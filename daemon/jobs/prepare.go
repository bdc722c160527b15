package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// A merge config may need preparation in Python before the Go engine
// reads it: Hugging Face Hub ids, mergekit's MODEL+LORA (and a PEFT adapter
// folder or a PyTorch pickle checkpoint given as a model), and the
// tokenizer keys (tokenizer_source, tokenizer:, chat_template), whose
// merged tokenizer and row maps (npsfuse_vocabulary) are built with the
// transformers tokenizers. The one implementation is npsfuse._prepare,
// which `npsfuse merge` calls in process and the daemon runs as
// `PYTHON -m npsfuse._prepare SCRATCH` (Env.Python): the config as JSON on
// stdin, one JSON line on stdout. Everything it writes lies in the job's
// scratch folder (Env.jobScratch), removed when the job ends.
//
// Confinement: the config's own paths (and the Hugging Face cache, for Hub
// ids) are checked against the data roots before Python runs, every file
// of a local input folder included (Python reads adapter and tokenizer
// files the Go engine does not); the prepared config is then resolved like
// any config, with the job's scratch folder as the one extra root.

// hubID is a Hugging Face Hub repository id, org/name, with an optional
// @revision (npsfuse._hub.is_hub_id's shape).
var hubID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[^@/][^@]*)?$`)

// prepRef is one model reference of a config that Python prepares.
type prepRef struct {
	where string   // "models[0].model"
	ref   string   // as written
	why   string   // "a Hugging Face Hub id", "MODEL+LORA", ...
	hub   []string // the parts that are Hub ids
	local []string // the parts that are local paths (checked before Python)
}

// prepPlan says what of a config Python prepares.
type prepPlan struct {
	cfg       map[string]any
	refs      []prepRef
	tokenizer string // the tokenizer key that needs the merged tokenizer ("" = none)
	baseOnly  bool   // the only tokenizer key is tokenizer_source: base
}

// needed reports whether Python has anything to do.
func (p *prepPlan) needed() bool { return len(p.refs) > 0 || p.tokenizer != "" }

// reason is the first thing that needs Python, for messages.
func (p *prepPlan) reason() string {
	if len(p.refs) > 0 {
		r := p.refs[0]
		return fmt.Sprintf("%s %q is %s", r.where, r.ref, r.why)
	}
	return fmt.Sprintf("%s needs the merged tokenizer", p.tokenizer)
}

// modelRefs lists (where, reference) for every model reference of a
// config, as npsfuse._hub._refs does: base_model, tokenizer_source (a
// model), models[].model, slices[].sources[].model, and the tokenizer:
// block's (tokenizerRefs).
func modelRefs(cfg map[string]any) [][2]string {
	out := slices.DeleteFunc(refsAt(cfg, "base_model", "tokenizer_source", "models[].model", "slices[].sources[].model"), func(r [2]string) bool {
		return r[1] == "" || (r[0] == "tokenizer_source" && (r[1] == "base" || r[1] == "union"))
	})
	return append(out, tokenizerRefs(cfg)...)
}

// tokenizerRefs lists the model references of the tokenizer: block: its
// source (a model) and each tokens: rule's source (a model, or a
// model_token's model), rules in name order (Python's dict order is the
// YAML's; the order only decides which problem is named first).
func tokenizerRefs(cfg map[string]any) [][2]string {
	tok, ok := cfg["tokenizer"].(map[string]any)
	if !ok {
		return nil
	}
	var out [][2]string
	if s, ok := tok["source"].(string); ok && s != "" && s != "base" && s != "union" {
		out = append(out, [2]string{"tokenizer.source", s})
	}
	rules, _ := tok["tokens"].(map[string]any)
	for _, name := range slices.Sorted(maps.Keys(rules)) {
		rule, _ := rules[name].(map[string]any)
		switch src := rule["source"].(type) {
		case string:
			if src != "" {
				out = append(out, [2]string{fmt.Sprintf("tokenizer.tokens[%q].source", name), src})
			}
		case map[string]any:
			if s, ok := src["model"].(string); ok && s != "" {
				out = append(out, [2]string{fmt.Sprintf("tokenizer.tokens[%q].source.model", name), s})
			}
		}
	}
	return out
}

// isHubID reports whether ref has the shape of a Hub id and is no path.
func isHubID(ref string) bool {
	return !filepath.IsAbs(ref) && !strings.HasPrefix(ref, ".") && !strings.HasPrefix(ref, "~") &&
		!strings.HasPrefix(ref, UploadRef) && hubID.MatchString(ref)
}

// isAdapter reports whether p is a PEFT adapter folder (adapter_config.json
// inside) or an adapter weights file with adapter_config.json beside it.
func isAdapter(p string, st os.FileInfo) bool {
	dir := p
	if !st.IsDir() {
		if b := filepath.Base(p); b != "adapter_model.safetensors" && b != "adapter_model.bin" {
			return false
		}
		dir = filepath.Dir(p)
	}
	fi, err := os.Stat(filepath.Join(dir, "adapter_config.json"))
	return err == nil && fi.Mode().IsRegular()
}

// isPickle reports whether p is a PyTorch pickle checkpoint: a .bin, .pt
// or .pth file, or a folder with pytorch_model.bin (or its index) and no
// safetensors.
func isPickle(p string, st os.FileInfo) bool {
	if !st.IsDir() {
		switch filepath.Ext(p) {
		case ".bin", ".pt", ".pth":
			return true
		}
		return false
	}
	if m, _ := filepath.Glob(filepath.Join(p, "*.safetensors")); len(m) > 0 {
		return false
	}
	for _, f := range []string{"pytorch_model.bin", "pytorch_model.bin.index.json"} {
		if fi, err := os.Stat(filepath.Join(p, f)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// planPrepare finds what of cfg npsfuse._prepare would change
// (npsfuse._prepare.needs_preparing's rule).
func planPrepare(cfg map[string]any) *prepPlan {
	p := &prepPlan{cfg: cfg}
	for _, wr := range modelRefs(cfg) {
		where, ref := wr[0], wr[1]
		r := prepRef{where: where, ref: ref}
		parts := []string{ref}
		// A relative path is never looked up in the daemon's working
		// directory (Python runs in the empty scratch folder, where
		// npsfuse._hub.split_lora finds nothing either).
		if _, err := os.Stat(ref); (err != nil || !filepath.IsAbs(ref)) && strings.Contains(ref, "+") {
			parts = strings.Split(ref, "+")
			r.why = "MODEL+LORA (a PEFT LoRA adapter merged into its model)"
		}
		for _, part := range parts {
			if isHubID(part) {
				r.hub = append(r.hub, part)
				if r.why == "" {
					r.why = "not an absolute path: a Hugging Face Hub id (org/name[@revision])"
				}
				continue
			}
			r.local = append(r.local, part)
		}
		if r.why == "" && filepath.IsAbs(ref) {
			if st, err := os.Stat(ref); err == nil {
				switch {
				case strings.HasSuffix(where, ".model") && isAdapter(ref, st): // a model: key, as Python's k == "model"
					r.why = "a PEFT adapter (merged into base_model)"
				case !isAdapter(ref, st) && isPickle(ref, st):
					r.why = "a PyTorch pickle checkpoint (converted to safetensors)"
				}
			}
		}
		if r.why != "" {
			p.refs = append(p.refs, r)
		}
	}
	if _, ok := cfg["npsfuse_vocabulary"]; !ok {
		for _, k := range []string{"tokenizer_source", "tokenizer", "chat_template"} {
			if v, ok := cfg[k]; ok && v != nil && p.tokenizer == "" {
				p.tokenizer = k
			}
		}
		src, _ := cfg["tokenizer_source"].(string)
		p.baseOnly = p.tokenizer == "tokenizer_source" && src == "base" && cfg["chat_template"] == nil && cfg["tokenizer"] == nil
	}
	return p
}

// hfCache is the Hugging Face cache the daemon's Python reads Hub ids
// from: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
// XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub (the order of
// huggingface_hub's constants). The daemon passes it to Python as
// HF_HUB_CACHE, so both agree.
func hfCache() string {
	for _, k := range []string{"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"} {
		if v := os.Getenv(k); v != "" {
			return filepath.Clean(os.ExpandEnv(v))
		}
	}
	if v := os.Getenv("HF_HOME"); v != "" {
		return filepath.Join(os.ExpandEnv(v), "hub")
	}
	if v := os.Getenv("XDG_CACHE_HOME"); v != "" {
		return filepath.Join(v, "huggingface", "hub")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "huggingface", "hub")
	}
	return ""
}

// checkPrepare checks, before Python runs, that the daemon may prepare
// the config: Python is configured, every local path the config names
// (either side of MODEL+LORA included) is absolute, inside the data roots,
// and every file of its folder resolves inside them too (Python reads
// adapter, config and tokenizer files), and the Hugging Face cache lies
// inside the data roots when a Hub id is named. It returns the cache
// ("" when no Hub id is named).
func (e *Env) checkPrepare(p *prepPlan) (string, error) {
	if e.Python == "" {
		return "", invalid("config: %s, which npsfuse prepares in Python (npsfuse._prepare, as `npsfuse merge` does), and this daemon has no Python: set python in its configuration (NPSFUSE_PYTHON, --python) to an interpreter with npsfuse installed, or run this config with `npsfuse merge`", p.reason())
	}
	cache := ""
	for _, r := range p.refs {
		for _, l := range r.local {
			if strings.HasPrefix(l, UploadRef) {
				return "", invalid("%s %q: an upload is a tensor file, which %s cannot be prepared from: give checkpoint folders", r.where, r.ref, r.why)
			}
			if !filepath.IsAbs(l) {
				return "", invalid("%s %q: %q must be an absolute path (the daemon has no working directory of yours) or a Hugging Face Hub id (org/name[@revision])", r.where, r.ref, l)
			}
			if err := e.checkPythonInput(l, r.where); err != nil {
				return "", err
			}
		}
		if len(r.hub) > 0 && cache == "" {
			var err error
			if cache, err = e.hubCache(r.where, r.ref); err != nil {
				return "", err
			}
		}
	}
	// The merged tokenizer reads each model's folder: every local model.
	if p.tokenizer != "" {
		for _, m := range modelRefs(p.cfg) {
			if isHubID(m[1]) || strings.Contains(m[1], "+") || strings.HasPrefix(m[1], UploadRef) {
				continue // checked above, or refused by Python (an upload is no folder)
			}
			if !filepath.IsAbs(m[1]) {
				return "", invalid("%s %q must be an absolute path (the daemon has no working directory of yours) or a Hugging Face Hub id", m[0], m[1])
			}
			if err := e.checkPythonInput(m[1], m[0]); err != nil {
				return "", err
			}
		}
	}
	return cache, nil
}

// hubCache is the Hugging Face cache folder from which Python reads the
// Hub id ref (named at where), which must be an absolute path inside the
// data roots.
func (e *Env) hubCache(where, ref string) (string, error) {
	cache := hfCache()
	if cache == "" || !filepath.IsAbs(cache) {
		return "", invalid("%s %q is a Hugging Face Hub id, and the daemon has no Hugging Face cache folder (set HF_HUB_CACHE to an absolute path inside a data root)", where, ref)
	}
	if _, err := e.Roots.Check(cache); err != nil {
		return "", fmt.Errorf("%s %q is a Hugging Face Hub id, read from the Hugging Face cache %s: add the cache (or a folder above it) to data_roots, or set HF_HUB_CACHE for the daemon to a folder inside a data root: %w", where, ref, cache, err)
	}
	return cache, nil
}

// checkPythonInput checks a local input Python will read: inside the
// data roots, existing, and every entry of its folder (the file's folder
// for a file) resolving, through its links, inside the data roots.
func (e *Env) checkPythonInput(p, what string) error {
	r, err := e.Roots.Check(p)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	st, err := os.Stat(r)
	if err != nil {
		return invalid("%s %s does not exist", what, p)
	}
	dir := r
	if !st.IsDir() {
		dir = filepath.Dir(r)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return invalid("%s %s: %v", what, dir, err)
	}
	for _, ent := range entries {
		f := filepath.Join(dir, ent.Name())
		resolved, err := filepath.EvalSymlinks(f)
		if err != nil {
			return invalid("%s: %s cannot be resolved (a dangling link?): %v", what, f, err)
		}
		if _, err := e.Roots.Check(resolved); err != nil {
			return fmt.Errorf("%s: %s is a link to %s: %w", what, f, resolved, err)
		}
	}
	return nil
}

// prepMemory estimates the memory npsfuse._prepare holds for the
// MODEL+LORA inputs (and the pickle checkpoints) it converts, shard by
// shard: the largest weights file of those models read, merged and
// serialised (three copies), plus the largest adapter file. Hub ids count
// through their cached snapshot when it is there. The interpreter's own
// memory (a Python process with torch) is not counted.
func prepMemory(p *prepPlan, cache string) int64 {
	var shard, adapter int64
	for _, r := range p.refs {
		parts := append(append([]string(nil), r.local...), r.hub...)
		for i, part := range parts {
			path := part
			if i >= len(r.local) {
				if path = cachedSnapshot(cache, part); path == "" {
					continue
				}
			}
			n, _ := weightsSizes(path)
			if st, err := os.Stat(path); err == nil && isAdapter(path, st) {
				adapter = max(adapter, n)
			} else {
				shard = max(shard, n)
			}
		}
	}
	return 3*shard + adapter
}

// weightsSizes is the size of the largest weights file (.safetensors,
// .bin, .pt, .pth) of a checkpoint folder and the sum of their sizes; both
// are the file's size for a file, 0 when p cannot be read.
func weightsSizes(p string) (largest, total int64) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, 0
	}
	if !st.IsDir() {
		return st.Size(), st.Size()
	}
	entries, _ := os.ReadDir(p)
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".safetensors", ".bin", ".pt", ".pth":
			if fi, err := os.Stat(filepath.Join(p, e.Name())); err == nil && fi.Mode().IsRegular() {
				largest = max(largest, fi.Size())
				total += fi.Size()
			}
		}
	}
	return largest, total
}

// cachedSnapshot is the folder of Hub id ref (org/name[@revision]) in the
// Hugging Face cache's layout (models--org--name/snapshots/COMMIT, the
// commit from refs/REVISION unless the revision is one), or "".
func cachedSnapshot(cache, ref string) string {
	if cache == "" {
		return ""
	}
	repo, rev, _ := strings.Cut(ref, "@")
	if rev == "" {
		rev = "main"
	}
	root := filepath.Join(cache, "models--"+strings.ReplaceAll(repo, "/", "--"))
	commit := rev
	if b, err := os.ReadFile(filepath.Join(root, "refs", rev)); err == nil {
		commit = strings.TrimSpace(string(b))
	}
	if commit == "" || strings.ContainsAny(commit, "/\\") || commit == ".." {
		return ""
	}
	snap := filepath.Join(root, "snapshots", commit)
	if st, err := os.Stat(snap); err != nil || !st.IsDir() {
		return ""
	}
	return snap
}

// prepareError is npsfuse._prepare's error line.
type prepareError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// runPrepare runs `Env.Python -m npsfuse._prepare scratch` on cfg and
// returns the prepared config. Python's errors keep their kind (invalid
// input, not found, ...); a crash is internal, with the end of its stderr.
func (e *Env) runPrepare(ctx context.Context, cfg map[string]any, scratch, cache string) (map[string]any, error) {
	var answer struct {
		Config map[string]any `json:"config"`
	}
	if err := e.runPython(ctx, pythonCall{module: "npsfuse._prepare", doing: "preparing the config", errPrefix: "config: "},
		cfg, scratch, cache, &answer); err != nil {
		return nil, err
	}
	if answer.Config == nil {
		return nil, fault.Errorf(fault.Internal, "preparing the config in Python (%s -m npsfuse._prepare): an answer without the config", e.Python)
	}
	return answer.Config, nil
}

// pythonCall names one of the daemon's Python commands.
type pythonCall struct {
	module    string         // "npsfuse._prepare"
	doing     string         // "preparing the config", for messages
	errPrefix string         // prefixed to Python's own error messages
	progress  func(p string) // called with each progress message (nil: ignored)
}

// runPython runs `Env.Python -m MODULE scratch` (npsfuse._prepare.answer's
// protocol): in as JSON on stdin; on stdout, progress lines
// {"progress": {"message": ...}} handed to call.progress, then the answer,
// decoded into out, or {"error": {"kind", "message"}}, returned with its
// kind. A crash is internal, with the end of Python's stderr. Python runs
// in scratch, in its own process group (killed as a whole when ctx ends),
// and dies with the daemon.
func (e *Env) runPython(ctx context.Context, call pythonCall, in any, scratch, cache string, out any) error {
	input, err := json.Marshal(in)
	if err != nil {
		return invalid("%s: %v", call.module, err)
	}
	cmd := exec.CommandContext(ctx, e.Python, "-m", call.module, scratch)
	cmd.Dir = scratch
	cmd.Stdin = bytes.NewReader(input)
	// The daemon's environment, less its own settings (NPSFUSE_TOKENS is a
	// secret Python has no use for).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix+"_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if cache != "" {
		cmd.Env = append(cmd.Env, "HF_HUB_CACHE="+cache)
	}
	lines := &answerLines{progress: call.progress}
	errTail := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = lines, errTail
	// Its own process group, killed as a whole on cancel: nothing Python
	// started outlives the job. If the daemon dies (kill -9), the kernel
	// kills Python too (Pdeathsig: when the thread that started it ends,
	// so this goroutine keeps its thread until Python has exited); the
	// next start removes the scratch folder and the retry starts anew.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	runtime.LockOSThread()
	runErr := cmd.Run()
	runtime.UnlockOSThread()
	if c := context.Cause(ctx); c != nil {
		return fmt.Errorf("stopped while %s in Python: %w", call.doing, c)
	}
	line := lines.answer()
	var answer struct {
		Error *prepareError `json:"error"`
	}
	var rest map[string]json.RawMessage
	if len(line) == 0 || json.Unmarshal(line, &answer) != nil || json.Unmarshal(line, &rest) != nil || len(rest) == 0 {
		var ee *exec.ExitError
		what := "no answer"
		if errors.As(runErr, &ee) {
			what = ee.String()
		} else if runErr != nil {
			what = runErr.Error()
		}
		return fault.Errorf(fault.Internal, "%s in Python (%s -m %s): %s; stderr: %s", call.doing, e.Python, call.module, what, strings.TrimSpace(errTail.String()))
	}
	if answer.Error != nil {
		k, ok := fault.ParseKind(answer.Error.Kind)
		if !ok {
			k = fault.Internal
		}
		return fault.Errorf(k, "%s%s", call.errPrefix, answer.Error.Message)
	}
	if runErr != nil {
		return fault.Errorf(fault.Internal, "%s in Python: %v; stderr: %s", call.doing, runErr, strings.TrimSpace(errTail.String()))
	}
	if err := json.Unmarshal(line, out); err != nil {
		return fault.Errorf(fault.Internal, "%s in Python (%s -m %s): a malformed answer: %v", call.doing, e.Python, call.module, err)
	}
	return nil
}

// answerLines is a Python command's stdout: progress lines are handed on
// as they come, the last other line is kept (the answer).
type answerLines struct {
	progress func(string)
	partial  []byte // an unfinished line
	last     []byte // the last complete line that is no progress line
}

func (a *answerLines) Write(p []byte) (int, error) {
	a.partial = append(a.partial, p...)
	for {
		i := bytes.IndexByte(a.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		a.line(a.partial[:i])
		a.partial = a.partial[i+1:]
	}
}

// line takes one complete line.
func (a *answerLines) line(l []byte) {
	l = bytes.TrimSpace(l)
	if len(l) == 0 {
		return
	}
	if bytes.HasPrefix(l, []byte(`{"progress"`)) {
		var p struct {
			Progress *struct {
				Message string `json:"message"`
			} `json:"progress"`
		}
		if json.Unmarshal(l, &p) == nil && p.Progress != nil {
			if a.progress != nil {
				a.progress(p.Progress.Message)
			}
			return
		}
	}
	a.last = append(a.last[:0], l...)
}

// answer is the last line that is no progress line (an unfinished last
// line counts).
func (a *answerLines) answer() []byte {
	if l := bytes.TrimSpace(a.partial); len(l) > 0 {
		a.line(l)
		a.partial = nil
	}
	return a.last
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

// jobScratch is job id's scratch folder: under the daemon's state folder
// (beside the job store), private to the daemon's user.
func (e *Env) jobScratch(id uint64) string {
	return filepath.Join(e.scratchRoot(), fmt.Sprintf("job-%d", id))
}

// scratchRoot holds the jobs' scratch folders: Env.Scratch, or "scratch"
// beside the uploads folder (the daemon's state folder).
func (e *Env) scratchRoot() string {
	if e.Scratch != "" {
		return e.Scratch
	}
	if e.Uploads == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(e.Uploads), "scratch")
}

// SweepScratch removes every job scratch folder; Recover calls it before
// any job runs (a crash leaves the scratch of the jobs it interrupted).
func (e *Env) SweepScratch() {
	root := e.scratchRoot()
	if root == "" {
		return
	}
	entries, _ := os.ReadDir(root)
	for _, ent := range entries {
		if strings.HasPrefix(ent.Name(), "job-") {
			if err := os.RemoveAll(filepath.Join(root, ent.Name())); err != nil && e.Log != nil {
				e.Log.Warn("cannot remove a job's scratch folder", "path", ent.Name(), "error", err)
			}
		}
	}
}
