// Package checkpoint reads and writes Hugging Face checkpoints made of
// safetensors files: a folder with model.safetensors, or with sharded
// model-0000x-of-0000N.safetensors files and model.safetensors.index.json,
// or a single .safetensors file.
//
// Reading maps every shard (arrowio/safetensors) and serves each tensor as
// a zero-copy byte slice; Advise and AdviseBytes let a streaming reader ask
// the kernel to prefetch a tensor's pages and to drop them from the
// process's resident set once merged, and Populate maps a range in, waiting
// for its reads. Writing lays tensors out into shards of bounded size,
// writes the index, and copies the configuration and tokenizer files, all
// inside a temporary folder that replaces the destination in one rename.
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// IndexFile is the name of the shard index of a sharded checkpoint.
const IndexFile = "model.safetensors.index.json"

// SingleFile is the name of an unsharded checkpoint's weights.
const SingleFile = "model.safetensors"

// ErrCheckpoint marks a checkpoint that cannot be read.
var ErrCheckpoint = fault.New(fault.InvalidInput, "bad checkpoint")

// Checkpoint is an open checkpoint: every shard memory-mapped.
type Checkpoint struct {
	// Path is what was opened (a folder or a file).
	Path string
	// Dir is the folder holding config.json and tokenizer files, if any.
	Dir    string
	files  []*safetensors.File
	where  map[string]int // tensor name → index in files
	names  []string       // in checkpoint order
	closed bool
}

// Open opens the checkpoint at path (folder or .safetensors file) and
// validates every shard. Errors name the file.
func Open(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	c := &Checkpoint{Path: path, where: map[string]int{}}
	var shards []string
	var order []string
	switch {
	case !st.IsDir():
		if filepath.Ext(path) != ".safetensors" {
			return nil, fmt.Errorf("%w: %s is not a .safetensors file", ErrCheckpoint, path)
		}
		shards = []string{path}
		c.Dir = filepath.Dir(path)
	default:
		c.Dir = path
		shards, order, err = shardFiles(path)
		if err != nil {
			return nil, err
		}
	}
	for _, s := range shards {
		f, err := safetensors.Open(s)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%w: %w", ErrCheckpoint, err)
		}
		c.files = append(c.files, f)
		for _, n := range f.Names() {
			if j, dup := c.where[n]; dup {
				c.Close()
				return nil, fmt.Errorf("%w: tensor %q is in both %s and %s", ErrCheckpoint, n, c.files[j].Path(), s)
			}
			c.where[n] = len(c.files) - 1
		}
	}
	if order == nil {
		for n := range c.where {
			order = append(order, n)
		}
		sort.Strings(order)
	}
	for _, n := range order {
		if _, ok := c.where[n]; !ok {
			c.Close()
			return nil, fmt.Errorf("%w: %s lists tensor %q, which no shard holds", ErrCheckpoint, filepath.Join(path, IndexFile), n)
		}
	}
	if len(order) != len(c.where) {
		c.Close()
		return nil, fmt.Errorf("%w: %s lists %d tensors but the shards hold %d", ErrCheckpoint, filepath.Join(path, IndexFile), len(order), len(c.where))
	}
	c.names = order
	return c, nil
}

// shardFiles finds a folder's weight files and, for a sharded checkpoint,
// the tensor order of its index.
func shardFiles(dir string) ([]string, []string, error) {
	single := filepath.Join(dir, SingleFile)
	if _, err := os.Stat(single); err == nil {
		return []string{single}, nil, nil
	}
	idx := filepath.Join(dir, IndexFile)
	raw, err := ReadRegular(idx)
	if errors.Is(err, os.ErrNotExist) {
		found, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
		if len(found) == 0 {
			return nil, nil, fmt.Errorf("%w: no safetensors weights in folder %s", ErrCheckpoint, dir)
		}
		sort.Strings(found)
		return found, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		return nil, nil, fmt.Errorf("%w: %s is not a valid safetensors index: %w", ErrCheckpoint, idx, err)
	}
	if index.WeightMap == nil {
		return nil, nil, fmt.Errorf("%w: %s is not a valid safetensors index: no weight_map", ErrCheckpoint, idx)
	}
	set := map[string]bool{}
	var order []string
	for name, file := range index.WeightMap {
		if filepath.Base(file) != file {
			return nil, nil, fmt.Errorf("%w: %s: shard name %q must be a plain file name", ErrCheckpoint, idx, file)
		}
		p := filepath.Join(dir, file)
		if !set[p] {
			if _, err := os.Stat(p); err != nil {
				return nil, nil, fmt.Errorf("%w: %s names shard %q, which does not exist", ErrCheckpoint, idx, file)
			}
		}
		set[p] = true
		order = append(order, name)
	}
	sort.Strings(order)
	shards := make([]string, 0, len(set))
	for p := range set {
		shards = append(shards, p)
	}
	sort.Strings(shards)
	return shards, order, nil
}

// Names lists the tensors in checkpoint order (sorted by name).
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Info describes the named tensor.
func (c *Checkpoint) Info(name string) (safetensors.TensorInfo, bool) {
	i, ok := c.where[name]
	if !ok {
		return safetensors.TensorInfo{}, false
	}
	return c.files[i].Info(name)
}

// File is the path of the shard holding the named tensor.
func (c *Checkpoint) File(name string) string {
	if i, ok := c.where[name]; ok {
		return c.files[i].Path()
	}
	return ""
}

// Location is where the named tensor's bytes lie: the shard's path and
// the offset of its first byte in that file (ok false: no such tensor).
func (c *Checkpoint) Location(name string) (path string, offset int64, ok bool) {
	i, ok := c.where[name]
	if !ok {
		return "", 0, false
	}
	info, ok := c.files[i].Info(name)
	if !ok {
		return "", 0, false
	}
	return c.files[i].Path(), c.files[i].DataOffset() + info.Begin, true
}

// Bytes returns the named tensor's data, a view of the mapping.
func (c *Checkpoint) Bytes(name string) ([]byte, error) {
	i, ok := c.where[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no tensor %q", ErrCheckpoint, c.Path, name)
	}
	return c.files[i].Bytes(name)
}

// Advice values for Advise and AdviseBytes.
const (
	WillNeed = syscall.MADV_WILLNEED // start reading the pages in
	DontNeed = syscall.MADV_DONTNEED // drop them from this process (they stay in the page cache)
)

// populateRead is Linux's MADV_POPULATE_READ (5.14+): fault the pages in,
// waiting for their reads, without touching them from user space.
const populateRead = 22

// Advise passes madvise advice for the pages of the named tensor. Errors
// are ignored: advice is a hint.
func (c *Checkpoint) Advise(name string, advice int) {
	b, err := c.Bytes(name)
	if err != nil {
		return
	}
	AdviseBytes(b, advice)
}

// AdviseBytes passes madvise advice for the pages holding b, a slice of a
// mapping (from Bytes), widened to whole pages. Errors are ignored: advice
// is a hint. Note that the kernel reads at most its read-ahead limit (a few
// MB) per WillNeed call: callers that want a large range read in ask for it
// piece by piece.
func AdviseBytes(b []byte, advice int) {
	_ = madvise(b, advice)
}

// releaseSlack is how far Release widens its range on either side: the
// largest fault-around window Linux uses (fault_around_bytes is at most one
// page table's span, 2 MiB on x86-64). A read fault in a file mapping also
// maps the neighbouring pages already in the page cache within that window,
// so populating one tensor maps the tail of the tensor before it and the
// head of the one after; without the slack those pages stay mapped after
// their own tensor was released, and the resident set grows with the model.
const releaseSlack = 2 << 20

// Release drops the pages of b, a slice of a file mapping (from Bytes), from
// this process: they stay in the page cache, and a later read maps them
// again. The range is widened by releaseSlack on either side, clipped to
// the mapping that holds b (safetensors.MappingOf), to catch the pages that
// fault-around mapped for b's neighbours. The mappings are read-only, so
// dropping a neighbour's pages never loses data; it costs a refault only if
// the neighbour is read again. A slice in no mapping (a file read into
// memory, anonymous memory) is left alone. Errors are ignored: advice is a
// hint.
func Release(b []byte) {
	m := safetensors.MappingOf(b)
	if m == nil {
		return
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(m)))
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) - base)
	lo := max(off-releaseSlack, 0)
	hi := min(off+len(b)+releaseSlack, len(m))
	_ = madvise(m[lo:hi], DontNeed)
}

// Populate maps every page of b (a slice of a mapping) into the process,
// waiting for pages that are not in the page cache yet to be read: after it
// returns, reading b does not block on the disk. It uses MADV_POPULATE_READ
// and, where the kernel lacks it, reads one byte of every page.
func Populate(b []byte) { populate(b, madvise) }

// populate is Populate with the madvise call as a parameter (tests make it
// fail to exercise the fallback).
func populate(b []byte, advise func([]byte, int) error) {
	if len(b) == 0 || advise(b, populateRead) == nil {
		return
	}
	page := os.Getpagesize()
	var sink byte
	for i := 0; i < len(b); i += page {
		sink ^= b[i]
	}
	touchSink.Store(uint32(sink ^ b[len(b)-1]))
}

// touchSink keeps populate's fallback reads from being optimised away.
var touchSink atomic.Uint32

// madvise applies advice to the whole pages holding b.
func madvise(b []byte, advice int) error {
	if len(b) == 0 {
		return nil
	}
	return syscall.Madvise(pages(b), advice)
}

// pages widens b (not empty) to the whole pages holding it.
func pages(b []byte) []byte {
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := start &^ (page - 1)
	hi := (start + uintptr(len(b)) + page - 1) &^ (page - 1)
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(b)), -int(start-lo))), int(hi-lo))
}

// Resident counts the pages holding b (a slice of a file mapping) and how
// many of them are in the page cache (mincore); ok is false when the
// kernel cannot tell.
func Resident(b []byte) (in, all int, ok bool) {
	if len(b) == 0 {
		return 0, 0, true
	}
	region := pages(b)
	vec := make([]byte, len(region)/os.Getpagesize())
	if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(region))),
		uintptr(len(region)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
		return 0, 0, false
	}
	for _, v := range vec {
		in += int(v & 1)
	}
	return in, len(vec), true
}

// Close unmaps every shard; Bytes slices die with it.
func (c *Checkpoint) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
