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
		Defaults []struct {
			Row  int      `json:"row"`
			From [][2]int `json:"from"`
		} `json:"defaults"`
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
	filesOnly := voc.Size == 0 && voc.Tokens == 0 && len(in.Models) == 0 && len(in.Defaults) == 0
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
	for _, d := range in.Defaults {
		if d.Row < 0 || d.Row >= voc.Tokens {
			bad.add("npsfuse_vocabulary.defaults: row %d out of range [0, %d)", d.Row, voc.Tokens)
			continue
		}
		refs := []RowRef{}
		for _, f := range d.From {
			if f[0] < 0 || f[0] >= len(in.Models) || f[1] < 0 {
				bad.add("npsfuse_vocabulary.defaults: row %d takes %v, not a model's row", d.Row, f)
				continue
			}
			refs = append(refs, RowRef{Model: f[0], Row: f[1]})
		}
		voc.Defaults[d.Row] = refs
	}
	if voc.TokenizerDir != "" {
		if st, err := os.Stat(voc.TokenizerDir); err != nil || !st.IsDir() {
			bad.add("npsfuse_vocabulary.tokenizer_dir %s is not a folder", voc.TokenizerDir)
		}
	}
	c.Vocab = voc
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
	done map[string]map[int][]float32
}

// newVocabPlan matches the row maps with the run's checkpoints (the base
// and the models, by path); nil without a vocabulary.
func newVocabPlan(cfg *Config, base *checkpoint.Checkpoint, models []*checkpoint.Checkpoint) (*vocabPlan, error) {
	if cfg.Vocab == nil || cfg.Vocab.Tokens == 0 { // none, or the tokenizer files only
		return nil, nil
	}
	vp := &vocabPlan{v: cfg.Vocab, ck: make([]*checkpoint.Checkpoint, len(cfg.Vocab.Models)),
		of: map[*checkpoint.Checkpoint]int{}, done: map[string]map[int][]float32{}}
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

// rows returns tensor name of checkpoint c in the merged vocabulary, as
// float32: each output row is the model's own row, else the token's
// default (a mean of stored rows, in order, or zeros), and padding rows
// are the mean of the model's first Tokens output rows. Results are kept
// for the run (one tensor per model and vocabulary tensor).
func (vp *vocabPlan) rows(c *checkpoint.Checkpoint, name string) ([]float32, error) {
	m := vp.index(c)
	if m < 0 {
		return nil, fmt.Errorf("%w: %s has no row map for the merged vocabulary", ErrInput, c.Path)
	}
	if got, ok := vp.done[name][m]; ok {
		return got, nil
	}
	stored := make([]tensor.Vec, len(vp.ck))
	nrow := make([]int, len(vp.ck)) // 0: not loaded yet
	width := -1
	load := func(k int) (tensor.Vec, int, error) {
		if nrow[k] > 0 {
			return stored[k], nrow[k], nil
		}
		ck := vp.ck[k]
		info, ok := ck.Info(name)
		if !ok {
			return tensor.Vec{}, 0, fmt.Errorf("%w: %s: a token's row is taken from %s, which has no tensor %q", ErrInput, ck.Path, ck.Path, name)
		}
		b, err := ck.Bytes(name)
		if err != nil {
			return tensor.Vec{}, 0, err
		}
		dt, ok := checkpoint.KernelDType(info.DType)
		if !ok {
			return tensor.Vec{}, 0, fmt.Errorf("%w: %s: vocabulary tensor %q is %v, not a float dtype", ErrInput, ck.File(name), name, info.DType)
		}
		vec, err := vecOf(b, dt, ck.File(name), name)
		if err != nil {
			return tensor.Vec{}, 0, fmt.Errorf("%w: %v", ErrInput, err)
		}
		w := int(info.NumElements() / max(info.Shape[0], 1))
		if width >= 0 && w != width {
			return tensor.Vec{}, 0, fmt.Errorf("%w: %s: tensor %q has rows of %d values, other models %d", ErrInput, ck.File(name), name, w, width)
		}
		if info.Shape[0] <= 0 {
			return tensor.Vec{}, 0, fmt.Errorf("%w: %s: tensor %q has no rows", ErrInput, ck.File(name), name)
		}
		width = w
		stored[k], nrow[k] = vec, int(info.Shape[0])
		return vec, nrow[k], nil
	}
	own, nrows, err := load(m)
	if err != nil {
		return nil, err
	}
	out := make([]float32, vp.v.Size*width)
	row := func(k, r, t int) ([]float32, error) {
		vec, n, err := load(k)
		if err != nil {
			return nil, err
		}
		if r >= n {
			return nil, fmt.Errorf("%w: %s: tensor %q has %d rows, the tokenizer's row map wants row %d (token %d): does its tokenizer fit its config's vocab_size?",
				ErrInput, vp.ck[k].File(name), name, n, r, t)
		}
		buf := make([]float32, width)
		vec.Load(buf, r*width)
		return buf, nil
	}
	for t, r := range vp.v.Models[m].Rows {
		dst := out[t*width : (t+1)*width]
		if r >= 0 {
			if int(r) >= nrows {
				return nil, fmt.Errorf("%w: %s: tensor %q has %d rows, the tokenizer's row map wants row %d (token %d)", ErrInput, c.File(name), name, nrows, r, t)
			}
			own.Load(dst, int(r)*width)
			continue
		}
		refs := vp.v.Defaults[t]
		for _, ref := range refs { // mergekit: embed = embed + row, then /= count, in float32
			src, err := row(ref.Model, ref.Row, t)
			if err != nil {
				return nil, err
			}
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
	if vp.done[name] == nil {
		vp.done[name] = map[int][]float32{}
	}
	vp.done[name][m] = out
	return out, nil
}

// vocabBytes is rows as bytes (F32, native little-endian order).
func vocabBytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), len(x)*4)
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
	if _, hasSlices := top["slices"]; hasSlices {
		bad.add("a merged vocabulary (tokenizer_source, tokenizer:) with slices: is not supported yet: merge the slices first, then the vocabularies")
	}
	parseVocabulary(c, v, resolve, bad)
	checkVocabModels(c, bad)
}
