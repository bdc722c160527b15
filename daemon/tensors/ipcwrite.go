package tensors

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	flatbuffers "github.com/google/flatbuffers/go"
)

// IPCLayout is the byte layout of an Arrow IPC tensor file with one
// record batch (one row) per tensor, computed before anything is written
// so that the file can be sized, mapped, and each tensor's bytes written
// (or computed) straight into place. Every tensor's data starts at a
// 64-byte aligned file offset.
type IPCLayout struct {
	// Size is the file size in bytes.
	Size    int64
	metas   []Meta
	schema  []byte   // encapsulated schema message
	msgs    [][]byte // encapsulated record batch messages (prefix + flatbuffer + padding)
	blocks  []int64  // file offset of each batch message
	bodies  []int64  // file offset of each batch body
	dataOff []int64  // body-relative offset of each tensor's data buffer
	eos     int64    // file offset of the end-of-stream marker
	footer  []byte
}

// bodyPlan is the body layout of a one-row batch holding n bytes of
// tensor m: the 14 buffers' (offset, length) pairs and the body length.
// The data buffer starts 64-byte aligned.
func bodyPlan(m Meta, n int64) (bufs [14][2]int64, dataOff, bodyLen int64) {
	pad8 := func(x int64) int64 { return (x + 7) &^ 7 }
	var at int64
	put := func(k int, n int64) {
		bufs[k] = [2]int64{at, n}
		at = pad8(at + n)
	}
	strs := []string{m.Name, WireName(m.DType), FormatShape(m.Shape)}
	for c, s := range strs {
		put(3*c, 0)   // validity: none (no nulls)
		put(3*c+1, 8) // two int32 offsets
		put(3*c+2, int64(len(s)))
	}
	put(9, 0)
	put(10, 8) // the int64 offset value
	put(11, 0)
	put(12, 16) // two int64 offsets
	at = (at + 63) &^ 63
	dataOff = at
	put(13, n)
	return bufs, dataOff, at
}

// bodyPrefix is the body of a one-row batch up to its data buffer: the
// name, dtype and shape strings, the piece's byte offset and the data
// column's offsets [0, n).
func bodyPrefix(m Meta, offset, n int64) []byte {
	bufs, dataOff, _ := bodyPlan(m, n)
	body := make([]byte, dataOff)
	strs := []string{m.Name, WireName(m.DType), FormatShape(m.Shape)}
	for c, s := range strs {
		binary.LittleEndian.PutUint32(body[bufs[3*c+1][0]+4:], uint32(len(s)))
		copy(body[bufs[3*c+2][0]:], s)
	}
	binary.LittleEndian.PutUint64(body[bufs[10][0]:], uint64(offset))
	binary.LittleEndian.PutUint64(body[bufs[12][0]+8:], uint64(n))
	return body
}

// batchMessage is the flatbuffer of a one-row record batch message
// holding n bytes of m, and its body length.
func batchMessage(m Meta, n int64) ([]byte, int64) {
	bufs, _, bodyLen := bodyPlan(m, n)
	return buildMessage(headerRecordBatch, func(b *flatbuffers.Builder) flatbuffers.UOffsetT {
		return buildBatch(b, bufs[:])
	}, bodyLen), bodyLen
}

// PlanIPC lays out a tensor file for metas (names must be unique and
// every Meta valid). Cost O(total metadata).
func PlanIPC(metas []Meta) (*IPCLayout, error) {
	seen := map[string]bool{}
	for _, m := range metas {
		if m.Name == "" || seen[m.Name] {
			return nil, fmt.Errorf("%w: tensor name %q is empty or repeated", ErrIPC, m.Name)
		}
		seen[m.Name] = true
		if _, err := m.checkedBytes(); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrIPC, m.Name, err)
		}
		if _, ok := wireNames[m.DType]; !ok {
			return nil, fmt.Errorf("%w: tensor %q: dtype %v cannot be written", ErrIPC, m.Name, m.DType)
		}
	}
	l := &IPCLayout{metas: metas}
	l.schema = encapsulate(buildMessage(headerSchema, buildSchema, 0), 8, 8)
	pos := int64(8 + len(l.schema))
	for _, m := range metas {
		fb, bodyLen := batchMessage(m, m.Bytes())
		msg := encapsulate(fb, pos, 64) // so that the body starts 64-byte aligned
		l.blocks = append(l.blocks, pos)
		l.msgs = append(l.msgs, msg)
		pos += int64(len(msg))
		l.bodies = append(l.bodies, pos)
		l.dataOff = append(l.dataOff, bodyLen-pad8(m.Bytes()))
		pos += bodyLen
	}
	l.eos = pos
	pos += 8
	l.footer = buildFooter(l)
	l.Size = pos + int64(len(l.footer)) + 4 + 6
	return l, nil
}

// DataPos is the file offset of tensor i's bytes.
func (l *IPCLayout) DataPos(i int) int64 { return l.bodies[i] + l.dataOff[i] }

// WriteMeta writes everything but the tensors' bytes into dst (the whole
// file, len(dst) == Size, zero-filled as a fresh file is).
func (l *IPCLayout) WriteMeta(dst []byte) {
	_ = l.segments(func(off int64, b []byte) error {
		copy(dst[off:], b)
		return nil
	})
}

// segments calls emit with every part of the file but the tensors' bytes
// and zero padding (a fresh file is zero-filled), in file order.
func (l *IPCLayout) segments(emit func(off int64, b []byte) error) error {
	if err := emit(0, []byte("ARROW1\x00\x00")); err != nil {
		return err
	}
	if err := emit(8, l.schema); err != nil {
		return err
	}
	for i, m := range l.metas {
		if err := emit(l.blocks[i], l.msgs[i]); err != nil {
			return err
		}
		if err := emit(l.bodies[i], bodyPrefix(m, 0, m.Bytes())); err != nil {
			return err
		}
	}
	tail := binary.LittleEndian.AppendUint32(nil, 0xFFFFFFFF) // end-of-stream marker
	tail = binary.LittleEndian.AppendUint32(tail, 0)
	tail = append(tail, l.footer...)
	tail = binary.LittleEndian.AppendUint32(tail, uint32(len(l.footer)))
	return emit(l.eos, append(tail, "ARROW1"...))
}

func pad8(x int64) int64 { return (x + 7) &^ 7 }

// encapsulate frames a flatbuffer message: continuation marker, length,
// the flatbuffer, zero padding so that the message written at file offset
// pos ends at a multiple of align.
func encapsulate(fb []byte, pos int64, align int64) []byte {
	n := int64(8 + len(fb))
	end := (pos + n + align - 1) / align * align
	out := make([]byte, end-pos)
	binary.LittleEndian.PutUint32(out[0:], 0xFFFFFFFF)
	binary.LittleEndian.PutUint32(out[4:], uint32(len(out)-8))
	copy(out[8:], fb)
	return out
}

func buildMessage(headerType byte, header func(*flatbuffers.Builder) flatbuffers.UOffsetT, bodyLen int64) []byte {
	b := flatbuffers.NewBuilder(512)
	h := header(b)
	b.StartObject(5)
	b.PrependInt16Slot(0, metadataV5, 0)
	b.PrependByteSlot(1, headerType, 0)
	b.PrependUOffsetTSlot(2, h, 0)
	b.PrependInt64Slot(3, bodyLen, 0)
	b.Finish(b.EndObject())
	return b.FinishedBytes()
}

// buildSchema writes the tensor-set schema: name, dtype, shape (utf8),
// offset (int64), data (large_binary), none nullable.
func buildSchema(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	fields := make([]flatbuffers.UOffsetT, len(Columns))
	for i, name := range Columns {
		nameOff := b.CreateString(name)
		var typ byte
		switch name {
		case "offset":
			typ = typeInt
			b.StartObject(2)
			b.PrependInt32Slot(0, 64, 0)
			b.PrependBoolSlot(1, true, false)
		case "data":
			typ = typeLargeBinary
			b.StartObject(0)
		default:
			typ = typeUtf8
			b.StartObject(0)
		}
		typOff := b.EndObject()
		b.StartVector(4, 0, 4)
		children := b.EndVector(0)
		b.StartObject(7)
		b.PrependUOffsetTSlot(0, nameOff, 0)
		b.PrependBoolSlot(1, false, false)
		b.PrependByteSlot(2, typ, 0)
		b.PrependUOffsetTSlot(3, typOff, 0)
		b.PrependUOffsetTSlot(5, children, 0)
		fields[i] = b.EndObject()
	}
	b.StartVector(4, len(fields), 4)
	for i := len(fields) - 1; i >= 0; i-- {
		b.PrependUOffsetT(fields[i])
	}
	vec := b.EndVector(len(fields))
	b.StartObject(4)
	b.PrependUOffsetTSlot(1, vec, 0)
	return b.EndObject()
}

// buildBatch writes a one-row RecordBatch header with the given buffers.
func buildBatch(b *flatbuffers.Builder, bufs [][2]int64) flatbuffers.UOffsetT {
	b.StartVector(16, len(Columns), 8)
	for range Columns {
		b.Prep(8, 16)
		b.PrependInt64(0) // null count
		b.PrependInt64(1) // length
	}
	nodes := b.EndVector(len(Columns))
	b.StartVector(16, len(bufs), 8)
	for i := len(bufs) - 1; i >= 0; i-- {
		b.Prep(8, 16)
		b.PrependInt64(bufs[i][1])
		b.PrependInt64(bufs[i][0])
	}
	buffers := b.EndVector(len(bufs))
	b.StartObject(5)
	b.PrependInt64Slot(0, 1, 0)
	b.PrependUOffsetTSlot(1, nodes, 0)
	b.PrependUOffsetTSlot(2, buffers, 0)
	return b.EndObject()
}

func buildFooter(l *IPCLayout) []byte {
	b := flatbuffers.NewBuilder(1024)
	schema := buildSchema(b)
	b.StartVector(24, 0, 8)
	dicts := b.EndVector(0)
	b.StartVector(24, len(l.blocks), 8)
	for i := len(l.blocks) - 1; i >= 0; i-- {
		b.Prep(8, 24)
		b.PrependInt64(l.bodyEnd(i) - l.bodies[i]) // body length
		b.Pad(4)
		b.PrependInt32(int32(len(l.msgs[i])))
		b.PrependInt64(l.blocks[i])
	}
	blocks := b.EndVector(len(l.blocks))
	b.StartObject(5)
	b.PrependInt16Slot(0, metadataV5, 0)
	b.PrependUOffsetTSlot(1, schema, 0)
	b.PrependUOffsetTSlot(2, dicts, 0)
	b.PrependUOffsetTSlot(3, blocks, 0)
	b.Finish(b.EndObject())
	return b.FinishedBytes()
}

// bodyEnd is the file offset where batch i's body ends.
func (l *IPCLayout) bodyEnd(i int) int64 {
	if i+1 < len(l.blocks) {
		return l.blocks[i+1]
	}
	return l.eos
}

// smallFile is the size below which WriteIPC writes from a buffer.
const smallFile = 1 << 20

// fill writes the metadata and every tensor's bytes into m (the file).
func (l *IPCLayout) fill(m []byte, metas []Meta, fill func(i int, dst []byte) error) error {
	l.WriteMeta(m)
	for i, meta := range metas {
		p := l.DataPos(i)
		if err := fill(i, m[p:p+meta.Bytes():p+meta.Bytes()]); err != nil {
			return err
		}
	}
	return nil
}

// WriteIPC writes a tensor file at path with one row per tensor: it sizes
// a temporary file beside path, maps it, writes the metadata, calls
// fill(i, dst) to put tensor i's bytes into dst (its region of the
// mapping: copy into it or compute in place), and renames the file onto
// path (after fsync when durable). The file is created with mode 0600. On
// error nothing is left at path. It returns the file size.
func WriteIPC(path string, metas []Meta, fill func(i int, dst []byte) error, durable bool) (int64, error) {
	l, err := PlanIPC(metas)
	if err != nil {
		return 0, err
	}
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return 0, err
	}
	if l.Size <= smallFile {
		// Small files: one write from memory beats sizing and mapping.
		m := make([]byte, l.Size)
		if err := l.fill(m, metas, fill); err != nil {
			return 0, err
		}
		if _, err := f.Write(m); err != nil {
			return 0, err
		}
	} else {
		if err := f.Truncate(l.Size); err != nil {
			return 0, fmt.Errorf("sizing %s: %w", path, err)
		}
		m, err := mapWritable(f, l.Size)
		if err != nil {
			return 0, err
		}
		if err := l.fill(m, metas, fill); err != nil {
			_ = syscall.Munmap(m)
			return 0, err
		}
		if err := syscall.Munmap(m); err != nil {
			return 0, err
		}
	}
	if durable {
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, err
	}
	ok = true
	return l.Size, nil
}

// Fill writes the file's metadata into m (a mapping of exactly l.Size
// bytes) and calls fill(i, dst) for tensor i's region, as WriteIPC does:
// the way to write a tensor file into a file the caller already maps.
func (l *IPCLayout) Fill(m []byte, fill func(i int, dst []byte) error) error {
	if int64(len(m)) != l.Size {
		return fmt.Errorf("%w: mapping of %d bytes for a %d-byte tensor file", ErrIPC, len(m), l.Size)
	}
	return l.fill(m, l.metas, fill)
}

// SmallFile is the size up to which WriteIPC writes from memory instead
// of mapping the file: below it, recycling mapped files gains nothing.
const SmallFile = smallFile

// MapWritable maps size bytes of f read-write and shared (pre-faulted on
// Linux); release the mapping with Unmap.
func MapWritable(f *os.File, size int64) ([]byte, error) { return mapWritable(f, size) }

// Unmap releases a mapping made by MapWritable.
func Unmap(m []byte) error { return syscall.Munmap(m) }

// CopyMapped is ParallelCopy for a src that is a file mapping not yet
// touched (an upload): each goroutine faults its part of src in with one
// call (MADV_POPULATE_READ on Linux) before copying it, which costs much
// less than a page-fault trap per page.
func CopyMapped(dst, src []byte) { parallelCopy(dst, src, true) }

// ParallelCopy copies src into dst (len(dst) == len(src)) on up to
// GOMAXPROCS goroutines in pieces of at least 4 MiB: one memory pass at
// the machine's copy bandwidth rather than one core's.
func ParallelCopy(dst, src []byte) { parallelCopy(dst, src, false) }

func parallelCopy(dst, src []byte, fault bool) {
	const piece = 4 << 20
	n := len(src)
	workers := min(runtime.GOMAXPROCS(0), n/piece)
	if workers <= 1 {
		if fault {
			prefault(src)
		}
		copy(dst, src)
		return
	}
	step := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += step {
		hi := min(lo+step, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if fault {
				prefault(src[lo:hi])
			}
			copy(dst[lo:hi], src[lo:hi])
		}()
	}
	wg.Wait()
}
