package stream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// maxIndexBytes bounds the shard index InputFiles reads (real indexes of
// 100B-parameter models are well under 1 MiB).
const maxIndexBytes = 64 << 20

// InputFiles lists the files a merge reads for the input at path (a
// checkpoint folder or a .safetensors file): the weight files and shard
// index checkpoint.Open reads, and config.json and the tokenizer and
// generation files (checkpoint.AuxFiles) of its folder, which a merge
// reads or copies into its output. Only files that exist (as any kind of
// file, links not followed) are listed; path itself comes first. Names an
// index lists are included as they are (checkpoint.Open refuses those that
// are not plain file names). The result is sorted after path.
func InputFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	dir := path
	out := []string{path}
	if !st.IsDir() {
		dir = filepath.Dir(path)
	}
	seen := map[string]bool{path: true}
	add := func(p string) {
		if seen[p] {
			return
		}
		if exists(p) {
			seen[p] = true
			out = append(out, p)
		}
	}
	if st.IsDir() {
		// The weight files checkpoint.Open reads: model.safetensors, else
		// the index and the shards it names, else every *.safetensors.
		single := filepath.Join(dir, checkpoint.SingleFile)
		idx := filepath.Join(dir, checkpoint.IndexFile)
		switch {
		case exists(single):
			add(single)
		case exists(idx):
			add(idx)
			if names, err := indexShards(idx); err == nil {
				for _, n := range names {
					if filepath.Base(n) == n && n != "." && n != ".." {
						add(filepath.Join(dir, n))
					}
				}
			}
		default:
			shards, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
			for _, s := range shards {
				add(s)
			}
		}
	}
	add(filepath.Join(dir, "config.json"))
	for _, name := range checkpoint.AuxFiles {
		add(filepath.Join(dir, name))
	}
	sort.Strings(out[1:])
	return out, nil
}

// exists reports whether p exists as any kind of file (links not followed).
func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// indexShards reads the shard names of a safetensors index (a regular
// file only: it is not opened otherwise).
func indexShards(idx string) ([]string, error) {
	st, err := os.Stat(idx)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > maxIndexBytes {
		return nil, fmt.Errorf("%s: not a regular file under %d bytes", idx, maxIndexBytes)
	}
	raw, err := checkpoint.ReadRegular(idx)
	if err != nil {
		return nil, err
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		return nil, err
	}
	var names []string
	for _, f := range index.WeightMap {
		names = append(names, f)
	}
	return names, nil
}

// CheckRegular refuses a file that exists but is not a regular file
// (after following links): a FIFO, socket, device or folder named like a
// checkpoint file would block the merge's open or read forever, or fail
// late. A missing file passes (its reader reports it).
func CheckRegular(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInput, path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is %s, not a regular file (checkpoint files must be regular files)", ErrInput, path, safetensors.FileKind(st.Mode()))
	}
	return nil
}

// CheckInputFiles checks, before anything is opened, that every file a
// merge of cfg reads (InputFiles of the base and of every model, and the
// statistics files) is a regular file. Errors wrap ErrInput and name the
// file and its kind.
func CheckInputFiles(cfg *Config) error {
	var paths []string
	if cfg.BaseModel != "" {
		paths = append(paths, cfg.BaseModel)
	}
	for _, m := range cfg.Models {
		paths = append(paths, m.Path)
	}
	for _, p := range paths {
		files, err := InputFiles(p)
		if err != nil {
			continue // checkpoint.Open reports a missing input
		}
		for i, f := range files {
			if i == 0 {
				if st, err := os.Stat(f); err == nil && st.IsDir() {
					continue // a checkpoint folder
				}
			}
			if err := CheckRegular(f); err != nil {
				return err
			}
		}
	}
	for _, m := range cfg.Models {
		if m.Statistics != "" {
			if err := CheckRegular(m.Statistics); err != nil {
				return err
			}
		}
	}
	return nil
}
