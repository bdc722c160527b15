package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// AuxFiles are copied from the base checkpoint's folder into the output
// when present: tokenizer and generation settings.
var AuxFiles = []string{
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
	"vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
	"sentencepiece.bpe.model", "generation_config.json", "preprocessor_config.json",
	"chat_template.jinja",
}

// ErrOutput marks an output folder that cannot be written.
var ErrOutput = fault.New(fault.AlreadyExists, "bad output folder")

// Output is a checkpoint folder under construction: everything is written
// into a temporary folder beside the destination, which Commit renames
// into place. Until then the destination is untouched.
type Output struct {
	final, tmp string
	force      bool
	done       bool
	// Stale lists the temporary folders of killed earlier runs (into the
	// same destination) that NewOutput removed.
	Stale []string
}

// NewOutput prepares to write the folder dir. An existing non-empty dir is
// refused unless force is set (it is then replaced at Commit). Temporary
// folders that killed earlier runs left beside dir are removed first
// (RemoveStale); the new one records its writer for the same purpose.
func NewOutput(dir string, force bool) (*Output, error) {
	dir = filepath.Clean(dir)
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 && !force {
		return nil, fmt.Errorf("%w: %s exists and is not empty (use --force to replace it)", ErrOutput, dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		if st, serr := os.Stat(dir); serr == nil && !st.IsDir() {
			return nil, fmt.Errorf("%w: %s exists and is not a folder", ErrOutput, dir)
		}
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	stale := RemoveStale(dir)
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".npsfuse-tmp-")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := markOwner(tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return &Output{final: dir, tmp: tmp, force: force, Stale: stale}, nil
}

// Dir is the temporary folder to write into.
func (o *Output) Dir() string { return o.tmp }

// Final is the destination folder.
func (o *Output) Final() string { return o.final }

// Commit moves the finished folder into place.
func (o *Output) Commit() error {
	if o.done {
		return fmt.Errorf("%w: output already committed or aborted", ErrOutput)
	}
	o.done = true
	if err := os.Remove(filepath.Join(o.tmp, ownerFile)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := os.Chmod(o.tmp, 0o755); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	var old string
	if _, err := os.Stat(o.final); err == nil {
		// An empty folder, or a forced replacement: move it aside first, so
		// that a failure in between leaves either the old or the new folder.
		old = o.tmp + ".old"
		if err := os.Rename(o.final, old); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
	}
	if err := os.Rename(o.tmp, o.final); err != nil {
		if old != "" {
			_ = os.Rename(old, o.final)
		}
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if old != "" {
		_ = os.RemoveAll(old)
	}
	return nil
}

// Abort removes the temporary folder; the destination is untouched.
func (o *Output) Abort() {
	if !o.done {
		o.done = true
		_ = os.RemoveAll(o.tmp)
	}
}

// Shard is one output file and the tensors it holds, in order.
type Shard struct {
	File    string
	Tensors []safetensors.TensorInfo
}

// PlanShards splits tensors (in order) into files of at most maxBytes data
// each (a larger tensor gets a file of its own). One shard is named
// model.safetensors, several model-0000i-of-0000N.safetensors.
func PlanShards(tensors []safetensors.TensorInfo, maxBytes int64) []Shard {
	var shards []Shard
	var cur []safetensors.TensorInfo
	var size int64
	for _, t := range tensors {
		n := t.ByteLen()
		if len(cur) > 0 && maxBytes > 0 && size+n > maxBytes {
			shards = append(shards, Shard{Tensors: cur})
			cur, size = nil, 0
		}
		cur = append(cur, t)
		size += n
	}
	if len(cur) > 0 || len(shards) == 0 {
		shards = append(shards, Shard{Tensors: cur})
	}
	for i := range shards {
		if len(shards) == 1 {
			shards[i].File = SingleFile
		} else {
			shards[i].File = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		}
	}
	return shards
}

// WriteIndex writes model.safetensors.index.json for a sharded output
// (nothing for a single shard).
func WriteIndex(dir string, shards []Shard) error {
	if len(shards) < 2 {
		return nil
	}
	var total int64
	wm := map[string]string{}
	for _, s := range shards {
		for _, t := range s.Tensors {
			total += t.ByteLen()
			wm[t.Name] = s.File
		}
	}
	idx := map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": wm}
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, IndexFile), append(b, '\n'), 0o644)
}

// CopyConfig copies config.json from srcDir with its dtype set to
// torchDType ("torch_dtype", or "dtype" where newer transformers wrote
// that), and the
// AuxFiles that exist. A missing config.json is not an error (a bare
// .safetensors input has none).
func CopyConfig(srcDir, dstDir, torchDType string) error {
	raw, err := ReadRegular(filepath.Join(srcDir, "config.json"))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		var cfg map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(srcDir, "config.json"), err)
		}
		// Set the key(s) the base uses: newer transformers write "dtype",
		// older ones "torch_dtype" (the default when neither is present).
		_, hasNew := cfg["dtype"]
		_, hasOld := cfg["torch_dtype"]
		if hasOld || !hasNew {
			cfg["torch_dtype"] = torchDType
		}
		if hasNew {
			cfg["dtype"] = torchDType
		}
		out, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dstDir, "config.json"), append(out, '\n'), 0o644); err != nil {
			return err
		}
	}
	for _, name := range AuxFiles {
		if err := copyFile(filepath.Join(srcDir, name), filepath.Join(dstDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := OpenRegular(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// ModelType reads config.json's "model_type" in dir ("" when absent).
func ModelType(dir string) string {
	raw, err := ReadRegular(filepath.Join(dir, "config.json"))
	if err != nil {
		return ""
	}
	var cfg struct {
		ModelType string `json:"model_type"`
	}
	if json.Unmarshal(raw, &cfg) != nil {
		return ""
	}
	return strings.TrimSpace(cfg.ModelType)
}
