package stream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/plan"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Vocabulary is a merge's output vocabulary (mergekit's tokenizer_source
// and tokenizer: keys), as npsfuse's Python side builds it with the
// tokenizers library: for every input model, which of its stored rows
// each output row of a vocabulary tensor (embed_tokens, lm_head, …) takes.
// The pipeline applies the row maps when it reads a vocabulary tensor, so
// every model's tensor has the merged vocabulary's rows before the merge.
type Vocabulary struct {
	// Size is the number of rows of the output's vocabulary tensors
	// (Tokens padded to pad_to_multiple_of).
	Size int
	// Tokens is the number of tokens of the merged tokenizer; rows
	// Tokens..Size-1 are padding, each model's mean of its first Tokens
	// rows (as mergekit does).
	Tokens int
	// Models are the row maps, one per input model (the base included).
	Models []VocabModel
	// Defaults are the rows a model without its own row takes: the mean
	// of the listed stored rows (summed in order, then divided), or zeros
	// when the list is empty. Keyed by output row.
	Defaults map[int][]RowRef
	// SliceDefaults are a slices merge's defaults, one entry per group of
	// sources that merges vocabulary tensors (the embeddings: the first
	// slice's sources; the head: the last slice's first sources). mergekit
	// picks a token's default among the models the tensor merges, with
	// that slice's base, so it differs from group to group; Defaults is
	// then unused.
	SliceDefaults []SliceDefaults
	// TokenizerDir holds the merged tokenizer's files, which replace the
	// base's tokenizer files in the output ("" keeps the base's).
	TokenizerDir string
	// SizeKey is config.json's vocabulary size key ("vocab_size").
	SizeKey string
}

// VocabModel is one model's row map.
type VocabModel struct {
	Path string // resolved like the config's model paths
	// Rows[t] is the model's stored row of output token t, or -1: the
	// token's default row (Vocabulary.Defaults; zeros when none).
	Rows []int32
}

// SliceDefaults are the default rows of the vocabulary tensors that
// slice Slice merges from its sources Sources (indices into the slice's
// sources, in order), as Vocabulary.Defaults.
type SliceDefaults struct {
	Slice    int
	Sources  []int
	Defaults map[int][]RowRef
}

// RowRef is a stored row of one model: Model indexes Vocabulary.Models.
type RowRef struct {
	Model int
	Row   int
}

// vocabSuffixes are the names of vocabulary-indexed tensors (vocabulary
// on axis 0) in the architectures mergekit knows: Llama/Mistral/Qwen
// (model.embed_tokens, lm_head), GPT-2 (wte), GPT-NeoX (embed_in,
// embed_out), BLOOM/Falcon (word_embeddings), original Llama
// (tok_embeddings, output).
var vocabSuffixes = []string{"embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_in.weight",
	"embed_out.weight", "word_embeddings.weight", "tok_embeddings.weight"}

// IsVocabTensor reports whether name is a vocabulary-indexed tensor (its
// rows are tokens).
func IsVocabTensor(name string) bool {
	if name == "output.weight" {
		return true
	}
	for _, s := range vocabSuffixes {
		if name == s || strings.HasSuffix(name, "."+s) {
			return true
		}
	}
	return false
}

// parseVocabulary reads the npsfuse_vocabulary key (written by
// npsfuse's Python side, npsfuse/_tokenizer.py) into c.Vocab.
func parseVocabulary(c *Config, v any, resolve func(string) string, bad *problems) {
	raw, err := json.Marshal(v)
	if err != nil {
		bad.add("npsfuse_vocabulary: %v", err)
		return
	}
	var in struct {
		Size      int    `json:"size"`
		Tokens    int    `json:"tokens"`
		Tokenizer string `json:"tokenizer_dir"`
		SizeKey   string `json:"size_key"`
		Models    []struct {
			Path string  `json:"path"`
			Rows []int32 `json:"rows"`
		} `json:"models"`
		Defaults []vocabDefault `json:"defaults"`
		Slices   []struct {
			Slice    int            `json:"slice"`
			Sources  []int          `json:"sources"`
			Defaults []vocabDefault `json:"defaults"`
		} `json:"slices"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		bad.add("npsfuse_vocabulary: %v", err)
		return
	}
	voc := &Vocabulary{Size: in.Size, Tokens: in.Tokens, TokenizerDir: in.Tokenizer, SizeKey: in.SizeKey,
		Defaults: map[int][]RowRef{}}
	if voc.SizeKey == "" {
		voc.SizeKey = "vocab_size"
	}
	filesOnly := voc.Size == 0 && voc.Tokens == 0 && len(in.Models) == 0 && len(in.Defaults) == 0 && len(in.Slices) == 0
	if !filesOnly && (voc.Tokens <= 0 || voc.Size < voc.Tokens) {
		bad.add("npsfuse_vocabulary: size %d and tokens %d: need 0 < tokens ≤ size", voc.Size, voc.Tokens)
		return
	}
	for i, m := range in.Models {
		if len(m.Rows) != voc.Tokens {
			bad.add("npsfuse_vocabulary.models[%d] (%s): %d rows, want %d", i, m.Path, len(m.Rows), voc.Tokens)
			continue
		}
		for t, r := range m.Rows {
			if r < -1 {
				bad.add("npsfuse_vocabulary.models[%d] (%s): row %d of token %d", i, m.Path, r, t)
				break
			}
		}
		voc.Models = append(voc.Models, VocabModel{Path: resolve(m.Path), Rows: m.Rows})
	}
	voc.Defaults = defaultRows(in.Defaults, "npsfuse_vocabulary.defaults", voc.Tokens, len(in.Models), bad)
	for i, sd := range in.Slices {
		where := fmt.Sprintf("npsfuse_vocabulary.slices[%d]", i)
		if sd.Slice < 0 || sd.Slice >= len(c.Slices) || len(c.Slices) == 0 {
			bad.add("%s: slice %d is not one of the config's %d slices", where, sd.Slice, len(c.Slices))
			continue
		}
		for _, k := range sd.Sources {
			if k < 0 || k >= len(c.Slices[sd.Slice].Sources) {
				bad.add("%s: source %d is not one of slices[%d]'s %d sources", where, k, sd.Slice, len(c.Slices[sd.Slice].Sources))
			}
		}
		voc.SliceDefaults = append(voc.SliceDefaults, SliceDefaults{Slice: sd.Slice, Sources: sd.Sources,
			Defaults: defaultRows(sd.Defaults, where+".defaults", voc.Tokens, len(in.Models), bad)})
	}
	if voc.TokenizerDir != "" {
		if st, err := os.Stat(voc.TokenizerDir); err != nil || !st.IsDir() {
			bad.add("npsfuse_vocabulary.tokenizer_dir %s is not a folder", voc.TokenizerDir)
		}
	}
	c.Vocab = voc
}

// vocabDefault is one default row as npsfuse_vocabulary writes it: the
// output row and the [model, stored row] pairs it averages.
type vocabDefault struct {
	Row  int      `json:"row"`
	From [][2]int `json:"from"`
}

// defaultRows checks and converts a list of default rows (where names it
// in messages).
func defaultRows(in []vocabDefault, where string, tokens, models int, bad *problems) map[int][]RowRef {
	out := map[int][]RowRef{}
	for _, d := range in {
		if d.Row < 0 || d.Row >= tokens {
			bad.add("%s: row %d out of range [0, %d)", where, d.Row, tokens)
			continue
		}
		refs := []RowRef{}
		for _, f := range d.From {
			if f[0] < 0 || f[0] >= models || f[1] < 0 {
				bad.add("%s: row %d takes %v, not a model's row", where, d.Row, f)
				continue
			}
			refs = append(refs, RowRef{Model: f[0], Row: f[1]})
		}
		out[d.Row] = refs
	}
	return out
}

// checkVocabModels reports inputs of the merge that have no row map.
func checkVocabModels(c *Config, bad *problems) {
	if c.Vocab == nil || c.Vocab.Tokens == 0 {
		return
	}
	paths := []string{c.BaseModel}
	for _, m := range c.Models {
		paths = append(paths, m.Path)
	}
	for _, p := range paths {
		if p != "" && c.Vocab.model(p) < 0 {
			bad.add("npsfuse_vocabulary has no row map for %s", p)
		}
	}
}

// model is the index of path's row map, or -1.
func (v *Vocabulary) model(path string) int {
	return slices.IndexFunc(v.Models, func(m VocabModel) bool { return m.Path == path })
}

// vocabPlan applies a Vocabulary to the opened checkpoints of a run.
type vocabPlan struct {
	v    *Vocabulary
	ck   []*checkpoint.Checkpoint // by Vocabulary.Models index
	of   map[*checkpoint.Checkpoint]int
	bufs map[vocabKey]*vocabBuf
	list []*vocabBuf // every buffer, in creation order
}

// vocabKey names one model's vocabulary tensor with one set of defaults
// (-1: Vocabulary.Defaults, else an index into SliceDefaults).
type vocabKey struct {
	model int
	name  string
	set   int
}

// noDefaults is the defaults set of a slices group that
// npsfuse_vocabulary gives none for: a vocabulary tensor there is an
// error.
const noDefaults = -2

// newVocabPlan matches the row maps with the run's checkpoints (the base
// and the models, by path); nil without a vocabulary.
func newVocabPlan(cfg *Config, base *checkpoint.Checkpoint, models []*checkpoint.Checkpoint) (*vocabPlan, error) {
	if cfg.Vocab == nil || cfg.Vocab.Tokens == 0 { // none, or the tokenizer files only
		return nil, nil
	}
	vp := &vocabPlan{v: cfg.Vocab, ck: make([]*checkpoint.Checkpoint, len(cfg.Vocab.Models)),
		of: map[*checkpoint.Checkpoint]int{}, bufs: map[vocabKey]*vocabBuf{}}
	put := func(path string, c *checkpoint.Checkpoint) {
		if i := cfg.Vocab.model(path); i >= 0 {
			vp.ck[i] = c
			vp.of[c] = i
		}
	}
	put(base.Path, base)
	put(cfg.BaseModel, base)
	for i, m := range cfg.Models {
		put(m.Path, models[i])
	}
	for i, c := range vp.ck {
		if c == nil {
			return nil, fmt.Errorf("%w: the tokenizer's row map names %s, which is not an input of the merge", ErrInput, cfg.Vocab.Models[i].Path)
		}
	}
	return vp, nil
}

// close unmaps every buffer (nil-safe); the run's Mergers must not be
// used afterwards.
func (vp *vocabPlan) close() {
	if vp == nil {
		return
	}
	for _, b := range vp.list {
		b.free()
	}
	vp.list = nil
}

// sliceSet is the index in SliceDefaults of the defaults for the
// vocabulary tensors slice s merges from its sources srcs, or noDefaults.
func (vp *vocabPlan) sliceSet(s int, srcs []int) int {
	if vp == nil {
		return noDefaults
	}
	for i, sd := range vp.v.SliceDefaults {
		if sd.Slice == s && slices.Equal(sd.Sources, srcs) {
			return i
		}
	}
	return noDefaults
}

// index is the row map index of checkpoint c, or -1.
func (vp *vocabPlan) index(c *checkpoint.Checkpoint) int {
	if i, ok := vp.of[c]; ok {
		return i
	}
	return -1
}

// shape is the output shape of vocabulary tensor info (rows: Size).
func (vp *vocabPlan) shape(info safetensors.TensorInfo) []int64 {
	s := slices.Clone(info.Shape)
	s[0] = int64(vp.v.Size)
	return s
}

// applies reports whether the tensor name of checkpoint c is permuted.
func (vp *vocabPlan) applies(c *checkpoint.Checkpoint, name string) bool {
	if vp == nil || !IsVocabTensor(name) {
		return false
	}
	info, ok := c.Info(name)
	return ok && len(info.Shape) >= 1
}

// planInput is planInput(c) with the vocabulary tensors in the merged
// vocabulary's shape.
func (vp *vocabPlan) planInput(c *checkpoint.Checkpoint) plan.Input {
	in := planInput(c)
	if vp == nil {
		return in
	}
	for i, t := range in.Tensors {
		if vp.applies(c, t.Name) {
			info, _ := c.Info(t.Name)
			in.Tensors[i].Shape = vp.shape(info) // the stored dtype: the output keeps it
		}
	}
	return in
}

// vocabBuf is one model's vocabulary tensor in the merged vocabulary, as
// float32: each output row is the model's own row, else the token's
// default (a mean of stored rows, in order, or zeros), and padding rows
// are the mean of the model's first Tokens output rows. Its memory is
// reserved when the merge is planned (the Merger holds a view of it) but
// holds pages only between fill and release, which vocabStage times
// around the jobs that read it.
type vocabBuf struct {
	vp       *vocabPlan
	m        int    // row map index
	name     string // the tensor's name in the checkpoints
	defaults map[int][]RowRef
	width    int
	mem      []byte // vocabReserve's: Size·width float32
	filled   bool
}

// buf returns the buffer of tensor name of checkpoint c with defaults set
// (vocabKey), made on first use: every row the maps name is checked
// against the stored tensors here, so that filling it cannot fail on
// them. where names the tensor's place in a slices merge.
func (vp *vocabPlan) buf(c *checkpoint.Checkpoint, name string, set int, where string) (*vocabBuf, error) {
	m := vp.index(c)
	if m < 0 {
		return nil, fmt.Errorf("%w: %s has no row map for the merged vocabulary", ErrInput, c.Path)
	}
	key := vocabKey{m, name, set}
	if b, ok := vp.bufs[key]; ok {
		return b, nil
	}
	var defaults map[int][]RowRef
	switch {
	case set == noDefaults:
		return nil, fmt.Errorf("%w: npsfuse_vocabulary has no default rows for %s, which merges vocabulary tensor %q: the merged tokenizer was built for another config", ErrInput, where, name)
	case set < 0:
		defaults = vp.v.Defaults
	default:
		defaults = vp.v.SliceDefaults[set].Defaults
	}
	b := &vocabBuf{vp: vp, m: m, name: name, defaults: defaults, width: -1}
	nrows := make([]int, len(vp.ck)) // 0: not looked at yet
	look := func(k int) (int, error) {
		if nrows[k] > 0 {
			return nrows[k], nil
		}
		ck := vp.ck[k]
		info, ok := ck.Info(name)
		if !ok {
			return 0, fmt.Errorf("%w: %s: a token's row is taken from %s, which has no tensor %q", ErrInput, vp.ck[m].Path, ck.Path, name)
		}
		if _, ok := checkpoint.KernelDType(info.DType); !ok {
			return 0, fmt.Errorf("%w: %s: vocabulary tensor %q is %v, not a float dtype", ErrInput, ck.File(name), name, info.DType)
		}
		if len(info.Shape) == 0 || info.Shape[0] <= 0 {
			return 0, fmt.Errorf("%w: %s: tensor %q has no rows", ErrInput, ck.File(name), name)
		}
		w := int(info.NumElements() / info.Shape[0])
		if b.width >= 0 && w != b.width {
			return 0, fmt.Errorf("%w: %s: tensor %q has rows of %d values, other models %d", ErrInput, ck.File(name), name, w, b.width)
		}
		b.width, nrows[k] = w, int(info.Shape[0])
		return nrows[k], nil
	}
	own, err := look(m)
	if err != nil {
		return nil, err
	}
	for t, r := range vp.v.Models[m].Rows {
		if r >= 0 {
			if int(r) >= own {
				return nil, fmt.Errorf("%w: %s: tensor %q has %d rows, the tokenizer's row map wants row %d (token %d)", ErrInput, c.File(name), name, own, r, t)
			}
			continue
		}
		for _, ref := range defaults[t] {
			n, err := look(ref.Model)
			if err != nil {
				return nil, err
			}
			if ref.Row >= n {
				return nil, fmt.Errorf("%w: %s: tensor %q has %d rows, the tokenizer's row map wants row %d (token %d): does its tokenizer fit its config's vocab_size?",
					ErrInput, vp.ck[ref.Model].File(name), name, n, ref.Row, t)
			}
		}
	}
	if b.mem, err = vocabReserve(vp.v.Size * b.width * 4); err != nil {
		return nil, fmt.Errorf("%s: tensor %q in the merged vocabulary: %w", c.Path, name, err)
	}
	vp.bufs[key] = b
	vp.list = append(vp.list, b)
	return b, nil
}

// floats is the buffer as float32 values.
func (b *vocabBuf) floats() []float32 {
	if len(b.mem) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b.mem))), len(b.mem)/4)
}

// fill computes the rows (see vocabBuf); the stored tensors it read are
// dropped from the resident set afterwards, like a merge's inputs.
func (b *vocabBuf) fill() error {
	if b.filled {
		return nil
	}
	vp, width := b.vp, b.width
	stored := map[int]tensor.Vec{}
	var read [][]byte
	load := func(k int) (tensor.Vec, error) {
		if v, ok := stored[k]; ok {
			return v, nil
		}
		ck := vp.ck[k]
		info, _ := ck.Info(b.name)
		raw, err := ck.Bytes(b.name)
		if err != nil {
			return tensor.Vec{}, err
		}
		dt, _ := checkpoint.KernelDType(info.DType)
		v, err := vecOf(raw, dt, ck.File(b.name), b.name)
		if err != nil {
			return tensor.Vec{}, fmt.Errorf("%w: %v", ErrInput, err)
		}
		stored[k] = v
		read = append(read, raw)
		return v, nil
	}
	defer func() {
		for _, raw := range read {
			checkpoint.Release(raw)
		}
	}()
	own, err := load(b.m)
	if err != nil {
		return err
	}
	out := b.floats()
	clear(out)
	src := make([]float32, width)
	for t, r := range vp.v.Models[b.m].Rows {
		dst := out[t*width : (t+1)*width]
		if r >= 0 {
			own.Load(dst, int(r)*width)
			continue
		}
		refs := b.defaults[t]
		for _, ref := range refs { // mergekit: embed = embed + row, then /= count, in float32
			v, err := load(ref.Model)
			if err != nil {
				return err
			}
			v.Load(src, ref.Row*width)
			for i, x := range src {
				dst[i] += x
			}
		}
		if len(refs) > 1 {
			n := float32(len(refs))
			for i := range dst {
				dst[i] /= n
			}
		}
	}
	if vp.v.Size > vp.v.Tokens { // padding: the mean of the token rows
		mean := make([]float64, width)
		for t := 0; t < vp.v.Tokens; t++ {
			for i, x := range out[t*width : (t+1)*width] {
				mean[i] += float64(x)
			}
		}
		for t := vp.v.Tokens; t < vp.v.Size; t++ {
			for i := range mean {
				out[t*width+i] = float32(mean[i] / float64(vp.v.Tokens))
			}
		}
	}
	b.filled = true
	return nil
}

// release gives the buffer's pages back (its contents are lost).
func (b *vocabBuf) release() {
	if b.filled {
		vocabRelease(b.mem)
		b.filled = false
	}
}

// free unmaps the buffer.
func (b *vocabBuf) free() {
	if b.mem != nil {
		vocabFree(b.mem)
		b.mem, b.filled = nil, false
	}
}

// vocabStage times the vocabulary buffers of a run: each is filled right
// before the first job that reads it and released right after the last,
// so a merge holds the merged vocabulary's rows of one output tensor at a
// time (one buffer per model), whatever the number of vocabulary tensors.
// A Merger that reads every tensor before it merges its first
// (merge.Merger.WholeModel: a global scope, statistics over the whole
// model) needs its buffers filled from its first job on.
type vocabStage struct {
	fill, release [][]*vocabBuf // by job index
	all           []*vocabBuf
	held, peak    int64 // bytes filled and not released yet
}

// vocabHook, when set (tests), is called during every job, after its
// buffers are filled, with the stage and the job's index.
var vocabHook func(s *vocabStage, job int)

// newVocabStage schedules the buffers that jobs read (job.vocab).
func newVocabStage(jobs []job) *vocabStage {
	s := &vocabStage{fill: make([][]*vocabBuf, len(jobs)), release: make([][]*vocabBuf, len(jobs))}
	whole := map[*merge.Merger]int{} // a whole-model Merger's first job
	for i, j := range jobs {
		if j.merged < 0 || j.merger == nil {
			continue
		}
		if _, seen := whole[j.merger]; !seen && j.merger.WholeModel() {
			whole[j.merger] = i
		}
	}
	first, last := map[*vocabBuf]int{}, map[*vocabBuf]int{}
	for i, j := range jobs {
		for _, b := range j.vocab {
			f := i
			if w, ok := whole[j.merger]; ok && j.merged >= 0 {
				f = min(f, w)
			}
			if p, ok := first[b]; !ok {
				first[b] = f
				s.all = append(s.all, b)
			} else {
				first[b] = min(p, f)
			}
			last[b] = max(last[b], i)
		}
	}
	for _, b := range s.all {
		s.fill[first[b]] = append(s.fill[first[b]], b)
		s.release[last[b]] = append(s.release[last[b]], b)
	}
	return s
}

// before fills the buffers that job i is the first to need.
func (s *vocabStage) before(i int) error {
	for _, b := range s.fill[i] {
		if err := b.fill(); err != nil {
			return err
		}
		s.held += int64(len(b.mem))
		s.peak = max(s.peak, s.held)
	}
	if vocabHook != nil {
		vocabHook(s, i)
	}
	return nil
}

// after releases the buffers that job i is the last to read.
func (s *vocabStage) after(i int) {
	for _, b := range s.release[i] {
		if b.filled {
			s.held -= int64(len(b.mem))
		}
		b.release()
	}
}

// checkVocabSizes refuses models whose vocabulary tensors have different
// row counts when the config has no tokenizer rule, saying how to
// resolve it.
func checkVocabSizes(cfg *Config, base *checkpoint.Checkpoint, models []*checkpoint.Checkpoint) error {
	if cfg.Vocab != nil && cfg.Vocab.Tokens > 0 {
		return nil
	}
	for _, name := range base.Names() {
		if !IsVocabTensor(name) {
			continue
		}
		bi, _ := base.Info(name)
		if len(bi.Shape) == 0 {
			continue
		}
		var sizes []string
		differ := false
		for i, m := range models {
			mi, ok := m.Info(name)
			if !ok || len(mi.Shape) != len(bi.Shape) {
				continue
			}
			if mi.Shape[0] != bi.Shape[0] && slices.Equal(mi.Shape[1:], bi.Shape[1:]) {
				differ = true
			}
			sizes = append(sizes, fmt.Sprintf("model %d %s: %d", i, cfg.Models[i].Path, mi.Shape[0]))
		}
		if differ {
			return fmt.Errorf("%w: the models' vocabularies differ in size (%s rows: base %s: %d, %s): add tokenizer_source: base (the base's vocabulary), union (every model's tokens) or the path of the model whose tokenizer to use, or a tokenizer: block (source, tokens, pad_to_multiple_of), and run it with `npsfuse merge` or npsfuse.merge_checkpoints",
				ErrInput, name, base.Path, bi.Shape[0], strings.Join(sizes, ", "))
		}
	}
	return nil
}

// writeVocabFiles gives the output folder dir the merged tokenizer's
// files (replacing the base's tokenizer files) and config.json the new
// vocabulary size, as mergekit does.
func writeVocabFiles(dir string, v *Vocabulary) error {
	if v == nil {
		return nil
	}
	if v.TokenizerDir != "" {
		for _, name := range checkpoint.AuxFiles {
			if name == "generation_config.json" || name == "preprocessor_config.json" {
				continue
			}
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		entries, err := os.ReadDir(v.TokenizerDir)
		if err != nil {
			return fmt.Errorf("tokenizer files: %w", err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			raw, err := checkpoint.ReadRegular(filepath.Join(v.TokenizerDir, e.Name()))
			if err != nil {
				return fmt.Errorf("tokenizer files: %w", err)
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), raw, 0o644); err != nil {
				return err
			}
		}
	}
	if v.Tokens == 0 {
		return nil
	}
	return editConfigJSON(dir, func(cfg map[string]any) { cfg[v.SizeKey] = v.Size })
}

// parseTokenizerKeys checks mergekit's tokenizer keys (tokenizer_source,
// tokenizer, chat_template) and reads npsfuse_vocabulary, the merged
// vocabulary npsfuse's Python side builds from them. Without it only
// tokenizer_source: base (the base's tokenizer, copied) runs: the row maps
// need the tokenizers library.
func parseTokenizerKeys(c *Config, top map[string]any, resolve func(string) string, bad *problems) {
	src, hasSrc := top["tokenizer_source"]
	tok, hasTok := top["tokenizer"]
	tmpl, hasTmpl := top["chat_template"]
	hasSrc, hasTok, hasTmpl = hasSrc && src != nil, hasTok && tok != nil, hasTmpl && tmpl != nil
	if hasSrc && hasTok {
		bad.add("give tokenizer_source or tokenizer, not both (mergekit: `Cannot specify both tokenizer_source and tokenizer`)")
	}
	if hasSrc {
		if _, ok := src.(string); !ok {
			bad.add("tokenizer_source must be base, union or a model path, got %v", src)
		}
	}
	if hasTok {
		m, ok := tok.(map[string]any)
		if !ok {
			bad.add("tokenizer must be a mapping with source, tokens, pad_to_multiple_of")
		}
		for k := range m {
			if k != "source" && k != "tokens" && k != "pad_to_multiple_of" {
				bad.add("tokenizer: unknown key %q (known: pad_to_multiple_of, source, tokens)", k)
			}
		}
	}
	if hasTmpl {
		if _, ok := tmpl.(string); !ok {
			bad.add("chat_template must be a string (a template name, auto, or a Jinja template), got %v", tmpl)
		}
	}
	v, hasVocab := top["npsfuse_vocabulary"]
	if !hasVocab || v == nil {
		if hasTok || hasTmpl || (hasSrc && src != "base") {
			bad.add("tokenizer_source other than base, tokenizer: and chat_template need the merged tokenizer, which npsfuse builds in Python: run this config with `npsfuse merge` (or npsfuse.merge_checkpoints)")
		}
		return
	}
	parseVocabulary(c, v, resolve, bad)
	checkVocabModels(c, bad)
}
