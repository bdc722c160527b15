package tensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// ErrIPC marks an Arrow IPC file or stream that is not a valid tensor set.
var ErrIPC = fault.New(fault.InvalidInput, "bad tensor file")

// Arrow flatbuffer enum values used here (format/Schema.fbs, Message.fbs).
const (
	typeInt         = 2
	typeBinary      = 4
	typeUtf8        = 5
	typeLargeBinary = 19
	typeLargeUtf8   = 20

	headerSchema      = 1
	headerRecordBatch = 3

	metadataV5 = 4
)

var ipcMagic = []byte("ARROW1")

// Chunk is one row of a tensor set: bytes [Offset, Offset+len(Data)) of
// tensor Name, whose dtype and shape every row of the tensor repeats.
type Chunk struct {
	Name   string
	DType  string
	Shape  string
	Offset int64
	Data   []byte
}

// column kinds of the tensor schema, in Columns order.
type colKind struct {
	name     string
	str      bool // utf8 / binary (3 buffers) vs int64 (2 buffers)
	wideOffs bool // 64-bit offsets (large_utf8 / large_binary)
}

// ParseIPC reads an Arrow IPC file holding a tensor set (the schema of
// Columns) and returns its rows. Data slices alias b; strings are copied.
// Everything is validated: magic, footer, schema (names and types of the
// five columns, little-endian, no dictionaries), every record batch's
// message, nodes, buffers (inside the body, body inside the file), no
// compression, no nulls, and every offsets array (monotone, inside its
// data buffer). Cost O(rows + metadata); tensor bytes are not read.
func ParseIPC(b []byte) ([]Chunk, error) {
	n := len(b)
	if n < 18 || !bytes.Equal(b[:6], ipcMagic) || !bytes.Equal(b[n-6:], ipcMagic) {
		return nil, fmt.Errorf("%w: not an Arrow IPC file (no ARROW1 magic at both ends)", ErrIPC)
	}
	flen := int64(int32(binary.LittleEndian.Uint32(b[n-10:])))
	if flen <= 0 || flen > int64(n-18) {
		return nil, fmt.Errorf("%w: footer length %d does not fit a %d-byte file", ErrIPC, flen, n)
	}
	footer := fbuf{b[n-10-int(flen) : n-10]}
	ft, err := footer.root()
	if err != nil {
		return nil, fmt.Errorf("%w: footer: %v", ErrIPC, err)
	}
	schema, ok, err := ft.sub(1)
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: footer has no schema (%v)", ErrIPC, err)
	}
	cols, err := parseSchema(schema)
	if err != nil {
		return nil, err
	}
	if _, nd, _, err := ft.vector(2, 24); err != nil || nd > 0 {
		return nil, fmt.Errorf("%w: dictionaries are not supported in tensor files", ErrIPC)
	}
	start, nb, _, err := ft.vector(3, 24)
	if err != nil {
		return nil, fmt.Errorf("%w: footer record batches: %v", ErrIPC, err)
	}
	var out []Chunk
	for i := 0; i < nb; i++ {
		p := start + 24*i
		off, _ := footer.i64(p)
		metaLen64, _ := footer.u32(p + 8)
		metaLen := int64(int32(metaLen64))
		bodyLen, _ := footer.i64(p + 16)
		rows, err := parseBatch(b, off, metaLen, bodyLen, cols)
		if err != nil {
			return nil, fmt.Errorf("%w: record batch %d: %v", ErrIPC, i, err)
		}
		out = append(out, rows...)
	}
	return out, nil
}

// parseSchema checks the schema and returns the column layout by position.
func parseSchema(s table) ([]colKind, error) {
	endian, err := s.i16(0, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: schema: %v", ErrIPC, err)
	}
	if endian != 0 {
		return nil, fmt.Errorf("%w: big-endian files are not supported", ErrIPC)
	}
	fields, err := s.tables(1)
	if err != nil {
		return nil, fmt.Errorf("%w: schema fields: %v", ErrIPC, err)
	}
	if len(fields) != len(Columns) {
		return nil, fmt.Errorf("%w: the schema has %d columns; a tensor set has %v", ErrIPC, len(fields), Columns)
	}
	cols := make([]colKind, len(fields))
	for i, f := range fields {
		name, err := f.str(0)
		if err != nil {
			return nil, fmt.Errorf("%w: field %d: %v", ErrIPC, i, err)
		}
		if name != Columns[i] {
			return nil, fmt.Errorf("%w: column %d is %q; a tensor set has columns %v in that order", ErrIPC, i, name, Columns)
		}
		typ, err := f.u8(2, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: field %q: %v", ErrIPC, name, err)
		}
		if _, dict, _ := f.ref(4); dict {
			return nil, fmt.Errorf("%w: column %q is dictionary-encoded", ErrIPC, name)
		}
		ck := colKind{name: name}
		switch name {
		case "offset":
			tt, ok, err := f.sub(3)
			if err != nil || !ok || typ != typeInt {
				return nil, fmt.Errorf("%w: column offset must be int64", ErrIPC)
			}
			bw, err1 := tt.i32(0, 0)
			signed, err2 := tt.u8(1, 0)
			if err1 != nil || err2 != nil || bw != 64 || signed != 1 {
				return nil, fmt.Errorf("%w: column offset must be int64, got int%d", ErrIPC, bw)
			}
		case "data":
			switch typ {
			case typeBinary:
				ck.str = true
			case typeLargeBinary:
				ck.str, ck.wideOffs = true, true
			default:
				return nil, fmt.Errorf("%w: column data must be binary or large_binary (type id %d)", ErrIPC, typ)
			}
		default:
			switch typ {
			case typeUtf8:
				ck.str = true
			case typeLargeUtf8:
				ck.str, ck.wideOffs = true, true
			default:
				return nil, fmt.Errorf("%w: column %s must be utf8 (type id %d)", ErrIPC, name, typ)
			}
		}
		cols[i] = ck
	}
	return cols, nil
}

// parseBatch reads the record batch message at off and returns its rows.
func parseBatch(b []byte, off, metaLen, bodyLen int64, cols []colKind) ([]Chunk, error) {
	n := int64(len(b))
	if off < 8 || off%8 != 0 || metaLen < 8 || metaLen%8 != 0 || bodyLen < 0 ||
		off > n || metaLen > n-off || bodyLen > n-off-metaLen {
		return nil, fmt.Errorf("block (offset %d, metadata %d, body %d) does not fit the %d-byte file", off, metaLen, bodyLen, n)
	}
	fbStart, fbLen := off+4, int64(int32(binary.LittleEndian.Uint32(b[off:])))
	if fbLen == -1 { // continuation marker, then the length
		fbStart, fbLen = off+8, int64(int32(binary.LittleEndian.Uint32(b[off+4:])))
	}
	if fbLen <= 0 || fbLen > off+metaLen-fbStart {
		return nil, fmt.Errorf("message length %d does not fit its %d-byte block", fbLen, metaLen)
	}
	return batchRows(b[fbStart:fbStart+fbLen], b[off+metaLen:off+metaLen+bodyLen], cols)
}

// message returns the root table of an IPC message's flatbuffer and its
// header type.
func message(meta []byte) (table, uint8, error) {
	msg, err := fbuf{meta}.root()
	if err != nil {
		return table{}, 0, fmt.Errorf("message: %v", err)
	}
	ht, err := msg.u8(1, 0)
	if err != nil {
		return table{}, 0, fmt.Errorf("message header type: %v", err)
	}
	return msg, ht, nil
}

// batchRows reads a record batch message (meta: its flatbuffer) whose
// body is body, and returns its rows (Data aliases body).
func batchRows(meta, body []byte, cols []colKind) ([]Chunk, error) {
	msg, ht, err := message(meta)
	if err != nil {
		return nil, err
	}
	if ht != headerRecordBatch {
		return nil, fmt.Errorf("message is not a record batch (header type %d)", ht)
	}
	rb, ok, err := msg.sub(2)
	if err != nil || !ok {
		return nil, fmt.Errorf("record batch header: missing (%v)", err)
	}
	if _, comp, _ := rb.ref(3); comp {
		return nil, errors.New("compressed record batches are not supported")
	}
	rows, err := rb.i64(0, 0)
	if err != nil || rows < 0 {
		return nil, fmt.Errorf("bad row count %d", rows)
	}
	ns, nn, _, err := rb.vector(1, 16)
	if err != nil || nn != len(cols) {
		return nil, fmt.Errorf("%d field nodes for %d columns (%v)", nn, len(cols), err)
	}
	bs, nbuf, _, err := rb.vector(2, 16)
	want := 0
	for _, c := range cols {
		want += 2
		if c.str {
			want++
		}
	}
	if err != nil || nbuf != want {
		return nil, fmt.Errorf("%d buffers, want %d (%v)", nbuf, want, err)
	}
	perRow := int64(0) // every row needs at least this many body bytes
	for _, c := range cols {
		switch {
		case !c.str:
			perRow += 8
		case c.wideOffs:
			perRow += 8
		default:
			perRow += 4
		}
	}
	if rows > int64(len(body))/perRow {
		return nil, fmt.Errorf("%d rows cannot fit a %d-byte body", rows, len(body))
	}
	buffer := func(k int) ([]byte, error) {
		bo, _ := rb.f.i64(bs + 16*k)
		bl, _ := rb.f.i64(bs + 16*k + 8)
		if bo < 0 || bl < 0 || bo > int64(len(body)) || bl > int64(len(body))-bo {
			return nil, fmt.Errorf("buffer %d [%d, +%d) lies outside the %d-byte body", k, bo, bl, len(body))
		}
		return body[bo : bo+bl], nil
	}
	out := make([]Chunk, rows)
	k := 0
	for ci, c := range cols {
		length, _ := rb.f.i64(ns + 16*ci)
		nulls, _ := rb.f.i64(ns + 16*ci + 8)
		if length != rows || nulls != 0 {
			return nil, fmt.Errorf("column %s: %d rows with %d nulls, want %d rows and no nulls", c.name, length, nulls, rows)
		}
		k++ // validity bitmap: ignored (no nulls)
		if !c.str {
			vals, err := buffer(k)
			k++
			if err != nil {
				return nil, err
			}
			if int64(len(vals)) < 8*rows {
				return nil, fmt.Errorf("column %s: %d bytes of values for %d rows", c.name, len(vals), rows)
			}
			for r := range out {
				out[r].Offset = int64(binary.LittleEndian.Uint64(vals[8*r:]))
			}
			continue
		}
		offs, err := buffer(k)
		if err != nil {
			return nil, err
		}
		data, err := buffer(k + 1)
		if err != nil {
			return nil, err
		}
		k += 2
		w := int64(4)
		if c.wideOffs {
			w = 8
		}
		if int64(len(offs)) < w*(rows+1) {
			return nil, fmt.Errorf("column %s: %d bytes of offsets for %d rows", c.name, len(offs), rows)
		}
		at := func(r int64) int64 {
			if w == 8 {
				return int64(binary.LittleEndian.Uint64(offs[8*r:]))
			}
			return int64(int32(binary.LittleEndian.Uint32(offs[4*r:])))
		}
		prev := at(0)
		if prev < 0 {
			return nil, fmt.Errorf("column %s: negative offset", c.name)
		}
		for r := int64(0); r < rows; r++ {
			next := at(r + 1)
			if next < prev || next > int64(len(data)) {
				return nil, fmt.Errorf("column %s: row %d spans [%d, %d) of a %d-byte buffer", c.name, r, prev, next, len(data))
			}
			v := data[prev:next:next]
			switch c.name {
			case "name":
				out[r].Name = string(v)
			case "dtype":
				out[r].DType = string(v)
			case "shape":
				out[r].Shape = string(v)
			case "data":
				out[r].Data = v
			}
			prev = next
		}
	}
	return out, nil
}

// Assemble groups rows into tensors in order of first appearance,
// checking that each tensor's rows agree on dtype and shape and cover its
// bytes exactly once. A tensor in one row keeps aliasing that row's data;
// one in several rows is copied into new memory (copied reports how many
// bytes were).
func Assemble(rows []Chunk) (metas []Meta, data [][]byte, copied int64, err error) {
	type acc struct {
		meta  Meta
		parts []Chunk
	}
	idx := map[string]int{}
	var accs []*acc
	for _, r := range rows {
		i, seen := idx[r.Name]
		if !seen {
			dt, err := ParseDType(r.DType)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q: %v", ErrIPC, r.Name, err)
			}
			shape, err := ParseShape(r.Shape)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q: %v", ErrIPC, r.Name, err)
			}
			m := Meta{Name: r.Name, DType: dt, Shape: shape}
			if _, err := m.checkedBytes(); err != nil {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q: %v", ErrIPC, r.Name, err)
			}
			if r.Name == "" {
				return nil, nil, 0, fmt.Errorf("%w: a tensor has an empty name", ErrIPC)
			}
			i = len(accs)
			idx[r.Name] = i
			accs = append(accs, &acc{meta: m})
		} else {
			m := accs[i].meta
			if r.DType != WireName(m.DType) && r.DType != m.DType.String() || r.Shape != FormatShape(m.Shape) {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q: rows disagree on dtype/shape (%s %s vs %s %s)",
					ErrIPC, r.Name, r.DType, r.Shape, WireName(m.DType), FormatShape(m.Shape))
			}
		}
		accs[i].parts = append(accs[i].parts, r)
	}
	for _, a := range accs {
		total := a.meta.Bytes()
		var next int64
		for _, p := range a.parts {
			if p.Offset != next {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q: a row starts at byte %d, expected %d (rows must be in order, without gaps or overlaps)",
					ErrIPC, a.meta.Name, p.Offset, next)
			}
			if int64(len(p.Data)) > total-next {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q: rows hold more than its %d bytes", ErrIPC, a.meta.Name, total)
			}
			next += int64(len(p.Data))
		}
		if next != total {
			return nil, nil, 0, fmt.Errorf("%w: tensor %q (%s %s): rows hold %d of its %d bytes",
				ErrIPC, a.meta.Name, WireName(a.meta.DType), FormatShape(a.meta.Shape), next, total)
		}
		var d []byte
		switch len(a.parts) {
		case 0:
		case 1:
			d = a.parts[0].Data
		default:
			if total > math.MaxInt {
				return nil, nil, 0, fmt.Errorf("%w: tensor %q is too large", ErrIPC, a.meta.Name)
			}
			d = make([]byte, 0, total)
			for _, p := range a.parts {
				d = append(d, p.Data...)
			}
			copied += total
		}
		if d == nil {
			d = []byte{}
		}
		metas = append(metas, a.meta)
		data = append(data, d)
	}
	return metas, data, copied, nil
}
