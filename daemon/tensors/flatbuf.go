package tensors

import (
	"encoding/binary"
	"fmt"
)

// fbuf reads a FlatBuffer (google.github.io/flatbuffers, "Internals")
// with every access bounds-checked, so that a malformed Arrow IPC file is
// an error and never a panic. It implements only what Arrow's Footer,
// Schema and Message tables need: tables, scalar fields, offset fields,
// vectors of structs, vectors of tables and strings.
type fbuf struct {
	b []byte
}

func (f fbuf) check(pos, n int) error {
	if pos < 0 || n < 0 || pos > len(f.b) || n > len(f.b)-pos {
		return fmt.Errorf("flatbuffer: %d bytes at %d are outside the %d-byte buffer", n, pos, len(f.b))
	}
	return nil
}

func (f fbuf) u8(pos int) (uint8, error) {
	if err := f.check(pos, 1); err != nil {
		return 0, err
	}
	return f.b[pos], nil
}

func (f fbuf) u16(pos int) (uint16, error) {
	if err := f.check(pos, 2); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(f.b[pos:]), nil
}

func (f fbuf) u32(pos int) (uint32, error) {
	if err := f.check(pos, 4); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(f.b[pos:]), nil
}

func (f fbuf) i64(pos int) (int64, error) {
	if err := f.check(pos, 8); err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(f.b[pos:])), nil
}

// table is a table at pos with its vtable.
type table struct {
	f      fbuf
	pos    int
	vt     int // vtable position
	vtSize int // vtable size in bytes
}

// root returns the root table (the uoffset at byte 0).
func (f fbuf) root() (table, error) {
	off, err := f.u32(0)
	if err != nil {
		return table{}, err
	}
	return f.tableAt(int(off))
}

func (f fbuf) tableAt(pos int) (table, error) {
	so, err := f.u32(pos)
	if err != nil {
		return table{}, err
	}
	vt := pos - int(int32(so))
	vtSize, err := f.u16(vt)
	if err != nil {
		return table{}, err
	}
	if vtSize < 4 || vtSize%2 != 0 {
		return table{}, fmt.Errorf("flatbuffer: vtable at %d has size %d", vt, vtSize)
	}
	if err := f.check(vt, int(vtSize)); err != nil {
		return table{}, err
	}
	inline, _ := f.u16(vt + 2)
	if err := f.check(pos, int(inline)); err != nil {
		return table{}, err
	}
	return table{f: f, pos: pos, vt: vt, vtSize: int(vtSize)}, nil
}

// field returns the absolute position of field i, or -1 when absent.
func (t table) field(i int) int {
	e := 4 + 2*i
	if e+2 > t.vtSize {
		return -1
	}
	o, _ := t.f.u16(t.vt + e) // in range: the vtable was checked
	if o == 0 {
		return -1
	}
	return t.pos + int(o)
}

func (t table) u8(i int, def uint8) (uint8, error) {
	p := t.field(i)
	if p < 0 {
		return def, nil
	}
	return t.f.u8(p)
}

func (t table) i16(i int, def int16) (int16, error) {
	p := t.field(i)
	if p < 0 {
		return def, nil
	}
	v, err := t.f.u16(p)
	return int16(v), err
}

func (t table) i32(i int, def int32) (int32, error) {
	p := t.field(i)
	if p < 0 {
		return def, nil
	}
	v, err := t.f.u32(p)
	return int32(v), err
}

func (t table) i64(i int, def int64) (int64, error) {
	p := t.field(i)
	if p < 0 {
		return def, nil
	}
	return t.f.i64(p)
}

// ref follows the uoffset of field i; ok is false when the field is absent.
func (t table) ref(i int) (pos int, ok bool, err error) {
	p := t.field(i)
	if p < 0 {
		return 0, false, nil
	}
	off, err := t.f.u32(p)
	if err != nil {
		return 0, false, err
	}
	return p + int(off), true, nil
}

func (t table) sub(i int) (table, bool, error) {
	p, ok, err := t.ref(i)
	if err != nil || !ok {
		return table{}, ok, err
	}
	s, err := t.f.tableAt(p)
	return s, err == nil, err
}

// vector returns the position of the first element of the vector in field
// i and its length, checking that n elements of elemSize bytes fit.
func (t table) vector(i, elemSize int) (start, n int, ok bool, err error) {
	p, ok, err := t.ref(i)
	if err != nil || !ok {
		return 0, 0, ok, err
	}
	ln, err := t.f.u32(p)
	if err != nil {
		return 0, 0, false, err
	}
	if int64(ln)*int64(elemSize) > int64(len(t.f.b)) {
		return 0, 0, false, fmt.Errorf("flatbuffer: vector of %d × %d bytes at %d exceeds the buffer", ln, elemSize, p)
	}
	if err := t.f.check(p+4, int(ln)*elemSize); err != nil {
		return 0, 0, false, err
	}
	return p + 4, int(ln), true, nil
}

// tables returns the tables of the vector of tables in field i.
func (t table) tables(i int) ([]table, error) {
	start, n, ok, err := t.vector(i, 4)
	if err != nil || !ok {
		return nil, err
	}
	out := make([]table, n)
	for k := range out {
		e := start + 4*k
		off, _ := t.f.u32(e)
		if out[k], err = t.f.tableAt(e + int(off)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// str returns the string in field i ("" when absent).
func (t table) str(i int) (string, error) {
	start, n, ok, err := t.vector(i, 1)
	if err != nil || !ok {
		return "", err
	}
	return string(t.f.b[start : start+n]), nil
}
