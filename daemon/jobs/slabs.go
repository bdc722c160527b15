package jobs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/npsfuse/npsfuse/daemon/tensors"
)

// maxSlabMaps bounds how many recycled result files the daemon keeps
// mapped between uses.
const maxSlabMaps = 8

// slabPool keeps the daemon's mappings of shared-memory result files that
// clients hand back for reuse ("slabs"). Mapping a file costs page-table
// work for every page, about as much as the copy itself, so a slab is
// written through the mapping made the first time: steady-state results
// cost one memory copy. An entry is trusted only while its file is where
// the pool last saw it (same path, same inode, same size).
type slabPool struct {
	mu      sync.Mutex
	entries []*slabMap
}

// slabMap is one kept mapping.
type slabMap struct {
	ino  uint64
	path string // where the file is now (results/… or free/…)
	m    []byte
	busy bool // being written: never evicted
	used time.Time
}

// take returns the kept mapping of file f (ino, size) last seen at path,
// marked busy, or maps f and keeps the mapping.
func (p *slabPool) take(f *os.File, ino uint64, size int64, path string) (*slabMap, error) {
	p.mu.Lock()
	for _, e := range p.entries {
		if e.ino == ino && e.path == path && int64(len(e.m)) == size && !e.busy {
			e.busy = true
			p.mu.Unlock()
			return e, nil
		}
	}
	p.mu.Unlock()
	m, err := tensors.MapWritable(f, size)
	if err != nil {
		return nil, err
	}
	e := &slabMap{ino: ino, path: path, m: m, busy: true}
	p.mu.Lock()
	p.entries = append(p.entries, e)
	p.evictLocked()
	p.mu.Unlock()
	return e, nil
}

// done records that e's file now lives at path (or, with path "", that it
// is gone: the mapping is dropped).
func (p *slabPool) done(e *slabMap, path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.busy, e.path, e.used = false, path, time.Now()
	if path == "" {
		p.dropLocked(e)
		return
	}
	p.evictLocked()
}

// moved follows a kept slab's file from one path to another.
func (p *slabPool) moved(from, to string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.entries {
		if e.path == from {
			e.path, e.used = to, time.Now()
		}
	}
}

// forget drops the mapping of the file at path (deleted).
func (p *slabPool) forget(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range append([]*slabMap(nil), p.entries...) {
		if e.path == path && !e.busy {
			p.dropLocked(e)
		}
	}
}

// sweep drops mappings whose file is no longer where it was seen.
func (p *slabPool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range append([]*slabMap(nil), p.entries...) {
		if e.busy {
			continue
		}
		if ino, _, err := fileID(e.path); err != nil || ino != e.ino {
			p.dropLocked(e)
		}
	}
}

func (p *slabPool) dropLocked(e *slabMap) {
	for i, x := range p.entries {
		if x == e {
			p.entries = append(p.entries[:i], p.entries[i+1:]...)
			_ = tensors.Unmap(e.m)
			return
		}
	}
}

// evictLocked unmaps the least recently used idle mappings beyond the bound.
func (p *slabPool) evictLocked() {
	for len(p.entries) > maxSlabMaps {
		var victim *slabMap
		for _, e := range p.entries {
			if !e.busy && (victim == nil || e.used.Before(victim.used)) {
				victim = e
			}
		}
		if victim == nil {
			return
		}
		p.dropLocked(victim)
	}
}

// fileID returns a file's inode number and size.
func fileID(path string) (uint64, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, st.Size(), fmt.Errorf("%s: no inode number on this system", path)
	}
	return sys.Ino, st.Size(), nil
}

// shmResults is the shared-memory results folder ("" without one).
func (e *Env) shmResults() string {
	if e.ShmDir == "" {
		return ""
	}
	return filepath.Join(e.ShmDir, "results")
}

// WriteResult writes a tensor file at path as tensors.WriteIPC does. With
// recycle (a client's slab prefix, checked by CheckUploadName) and path in
// the shared-memory results folder, a file larger than tensors.SmallFile
// goes into a free slab of exactly its size named "<recycle>-…" (the
// client handed it back with RecycleResult) or into a new slab, and the
// daemon keeps the mapping for the next result. It returns the file size
// and the slab's name ("" for a plain file).
func (e *Env) WriteResult(path, recycle string, metas []tensors.Meta, fill func(i int, dst []byte) error, durable bool) (int64, string, error) {
	res := e.shmResults()
	if recycle == "" || res == "" || filepath.Dir(filepath.Clean(path)) != res {
		n, err := tensors.WriteIPC(path, metas, fill, durable)
		return n, "", err
	}
	if err := CheckUploadName(recycle); err != nil {
		return 0, "", fmt.Errorf("result.recycle: %w", err)
	}
	l, err := tensors.PlanIPC(metas)
	if err != nil {
		return 0, "", err
	}
	if l.Size <= tensors.SmallFile {
		n, err := tensors.WriteIPC(path, metas, fill, durable)
		return n, "", err
	}
	slab, tmp, from, f, err := e.claimSlab(recycle, l.Size)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	ino, _, err := fileID(tmp)
	if err != nil {
		os.Remove(tmp)
		return 0, "", err
	}
	ent, err := e.slabs.take(f, ino, l.Size, from)
	if err != nil {
		os.Remove(tmp)
		return 0, "", fmt.Errorf("slab %s: %w", slab, err)
	}
	err = l.Fill(ent.m, fill)
	if err == nil && durable {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		e.slabs.done(ent, "")
		return 0, "", err
	}
	e.slabs.done(ent, path)
	return l.Size, slab, nil
}

// claimSlab renames a free slab "<prefix>-*" of exactly size bytes to a
// temporary name in the results folder (the rename is the claim: a client
// taking the same slab for an upload loses or wins atomically), or creates
// a new slab there. It returns the slab's name, its temporary path, where
// it was claimed from ("" for a new one) and the open file.
func (e *Env) claimSlab(prefix string, size int64) (slab, tmp, from string, f *os.File, err error) {
	res := e.shmResults()
	entries, _ := os.ReadDir(e.ShmFreeDir())
	for _, ent := range entries {
		name, ok := strings.CutSuffix(ent.Name(), ".arrow")
		if !ok || !strings.HasPrefix(name, prefix+"-") {
			continue
		}
		if info, err := ent.Info(); err != nil || info.Size() != size || !info.Mode().IsRegular() {
			continue
		}
		src := filepath.Join(e.ShmFreeDir(), ent.Name())
		tmp = filepath.Join(res, ".slab-"+name+".tmp")
		if os.Rename(src, tmp) != nil {
			continue // taken meanwhile
		}
		f, err = os.OpenFile(tmp, os.O_RDWR, 0)
		if err == nil {
			if st, serr := f.Stat(); serr == nil && st.Size() == size {
				return name, tmp, src, f, nil
			}
			f.Close()
		}
		// Not what it seemed (resized meanwhile): leave it to the collector.
		_ = os.Rename(tmp, src)
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	slab = prefix + "-r" + hex.EncodeToString(r[:])
	tmp = filepath.Join(res, ".slab-"+slab+".tmp")
	f, err = os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", "", "", nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", "", "", nil, fmt.Errorf("sizing slab %s: %w", slab, err)
	}
	return slab, tmp, "", f, nil
}

// RecycleResult hands a shared-memory result file back as the free slab
// slab (ShmFreeDir()/slab.arrow), for the next result or upload of the
// client that owns it. The client must hold no view of it any more.
func (e *Env) RecycleResult(path, slab string) error {
	if err := CheckUploadName(slab); err != nil {
		return fmt.Errorf("recycle_as: %w", err)
	}
	res := e.shmResults()
	c := filepath.Clean(path)
	if res == "" || filepath.Dir(c) != res {
		return invalid("recycling %s as slab %q: only shared-memory result files can be recycled", path, slab)
	}
	dst := filepath.Join(e.ShmFreeDir(), slab+".arrow")
	if _, err := os.Lstat(dst); err == nil {
		return invalid("recycling %s: slab %q is already free", path, slab)
	}
	if err := os.Rename(c, dst); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: recycling %s as slab %q: the file is gone", ErrState, path, slab)
		}
		return err
	}
	e.slabs.moved(c, dst)
	now := time.Now()
	return os.Chtimes(dst, now, now)
}
