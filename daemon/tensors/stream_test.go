package tensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/ipc"
	"github.com/apache/arrow/go/v15/arrow/memory"
)

// piece is one stream message (a FlightData's data_header and data_body).
type piece struct{ header, body []byte }

// encodeSet is a stream of metas' tensors (data[i]) in pieces of at most
// chunk bytes, as DoGet sends one.
func encodeSet(metas []Meta, data [][]byte, chunk int) []piece {
	out := []piece{{SchemaHeader(), nil}}
	for i, m := range metas {
		for off := 0; off < len(data[i]) || off == 0; off += chunk {
			h, b := PieceMessage(m, int64(off), data[i][off:min(off+chunk, len(data[i]))])
			out = append(out, piece{h, b})
			if len(data[i]) == 0 {
				break
			}
		}
	}
	return out
}

// decodeSet runs a StreamDecoder over msgs and assembles the tensors.
func decodeSet(msgs []piece) ([]Meta, [][]byte, error) {
	var d StreamDecoder
	var rows []Chunk
	for _, p := range msgs {
		r, err := d.Next(p.header, p.body)
		if err != nil {
			return nil, nil, err
		}
		rows = append(rows, r...)
	}
	if !d.Started() {
		return nil, nil, errors.New("no schema")
	}
	metas, data, _, err := Assemble(rows)
	return metas, data, err
}

// frame packs messages for the fuzzers: [u32 len][header][u32 len][body]…
func frame(msgs []piece) []byte {
	var out []byte
	for _, p := range msgs {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p.header)))
		out = append(out, p.header...)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p.body)))
		out = append(out, p.body...)
	}
	return out
}

// unframe is frame's inverse; a short tail ends the list.
func unframe(b []byte) []piece {
	var out []piece
	next := func() ([]byte, bool) {
		if len(b) < 4 {
			return nil, false
		}
		n := int(binary.LittleEndian.Uint32(b))
		b = b[4:]
		if n > len(b) {
			n = len(b)
		}
		v := b[:n:n]
		b = b[n:]
		return v, true
	}
	for {
		h, ok := next()
		if !ok {
			return out
		}
		body, _ := next()
		out = append(out, piece{h, body})
	}
}

// patchLen replaces the first little-endian int64 equal to old in b.
func patchLen(t testing.TB, b []byte, old, new int64) []byte {
	var o [8]byte
	binary.LittleEndian.PutUint64(o[:], uint64(old))
	i := bytes.LastIndex(b, o[:])
	if i < 0 {
		t.Fatalf("no %d in the message", old)
	}
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint64(b[i:], uint64(new))
	return b
}

func TestStreamRoundTrip(t *testing.T) {
	metas := testMetas()
	data := make([][]byte, len(metas))
	for i, m := range metas {
		data[i] = pattern(m.Bytes(), byte(i))
	}
	for _, chunk := range []int{1, 7, 64, 1 << 20} {
		gm, gd, err := decodeSet(encodeSet(metas, data, chunk))
		if err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		for i, m := range metas {
			if gm[i].Name != m.Name || gm[i].DType != m.DType || FormatShape(gm[i].Shape) != FormatShape(m.Shape) || !bytes.Equal(gd[i], data[i]) {
				t.Errorf("chunk %d: tensor %d is %+v, want %+v", chunk, i, gm[i], m)
			}
		}
	}
}

// TestStreamInterop: arrow-go's IPC reader reads what PieceMessage
// sends (pyarrow's Flight client reads the same messages), and the
// decoder reads what arrow-go's writer sends.
func TestStreamInterop(t *testing.T) {
	metas := testMetas()[:3]
	data := [][]byte{pattern(60, 1), pattern(14, 2), pattern(24, 3)}
	var stream []byte
	for _, p := range encodeSet(metas, data, 10) {
		stream = append(stream, encapsulate(p.header, int64(len(stream)), 8)...)
		stream = append(stream, p.body...)
	}
	r, err := ipc.NewReader(bytes.NewReader(stream), ipc.WithAllocator(memory.DefaultAllocator))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	var rows []Chunk
	for r.Next() {
		rs, err := RowsOf(r.Record())
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range rs {
			c.Data = bytes.Clone(c.Data)
			rows = append(rows, c)
		}
	}
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	_, got, _, err := Assemble(rows)
	if err != nil || len(got) != 3 || !bytes.Equal(got[0], data[0]) || !bytes.Equal(got[2], data[2]) {
		t.Fatalf("arrow-go read %d tensors (%v)", len(got), err)
	}

	// arrow-go's writer → messages → StreamDecoder.
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(Schema))
	rec := Record(metas[0], 0, data[0])
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	rec.Release()
	w.Close()
	msgs := splitStream(t, buf.Bytes())
	gm, gd, err := decodeSet(msgs)
	if err != nil || len(gm) != 1 || !bytes.Equal(gd[0], data[0]) {
		t.Fatalf("decoding arrow-go's stream: %v", err)
	}
}

// splitStream cuts an encapsulated IPC stream into messages.
func splitStream(t *testing.T, b []byte) []piece {
	t.Helper()
	var out []piece
	for len(b) >= 8 {
		n := int(binary.LittleEndian.Uint32(b[4:]))
		if n == 0 {
			break
		}
		h := b[8 : 8+n]
		msg, _, err := message(h)
		if err != nil {
			t.Fatal(err)
		}
		bl, _ := msg.i64(3, 0)
		out = append(out, piece{h, b[8+n : 8+n+int(bl)]})
		b = b[8+n+int(bl):]
	}
	return out
}

// TestStreamDecoderRejects: hostile or broken messages are ErrIPC errors
// that say what is wrong. The first case is a 1 KiB message that makes
// arrow-go v15's reader allocate 1 TiB (a fatal, unrecoverable "out of
// memory" that would end the daemon): a buffer length of 2^40.
func TestStreamDecoderRejects(t *testing.T) {
	m := Meta{Name: "w", DType: 0, Shape: []int64{777}}
	m.DType, _ = ParseDType("uint8")
	h, b := PieceMessage(m, 0, make([]byte, 777))
	badSchema := bytes.Replace(SchemaHeader(), []byte("shape"), []byte("shapf"), 1)
	cases := []struct {
		name string
		msgs []piece
		want string
	}{
		{"buffer of 1 TiB", []piece{{SchemaHeader(), nil}, {patchLen(t, h, 777, 1<<40), b}}, "outside the"},
		{"body cut short", []piece{{SchemaHeader(), nil}, {h, b[:100]}}, "outside the"},
		{"batch before schema", []piece{{h, b}}, "must start with the tensor-set schema"},
		{"garbage header", []piece{{[]byte{1, 2, 3}, nil}}, "outside the"},
		{"other columns", []piece{{badSchema, nil}}, `column 2 is "shapf"`},
		{"two schemas", []piece{{SchemaHeader(), nil}, {SchemaHeader(), nil}}, "not a record batch"},
		{"row count", []piece{{SchemaHeader(), nil}, {patchLen(t, h, 1, 1<<40), b}}, "1099511627776 rows"},
	}
	for _, c := range cases {
		_, _, err := decodeSet(c.msgs)
		if !errors.Is(err, ErrIPC) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrIPC mentioning %q", c.name, err, c.want)
		}
	}
}

// TestUploadWriterMatchesWriteIPC: an upload received in pieces is stored
// byte for byte as WriteIPC writes the same tensors: one format at rest.
func TestUploadWriterMatchesWriteIPC(t *testing.T) {
	metas := testMetas()
	path, want := writeTest(t, metas)
	up := filepath.Join(t.TempDir(), "up.arrow")
	u, err := NewUploadWriter(up, metas)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range encodeSet(metas, want, 5)[1:] {
		var d StreamDecoder
		_, _ = d.Next(SchemaHeader(), nil)
		rows, err := d.Next(p.header, p.body)
		if err != nil {
			t.Fatal(err)
		}
		if err := u.Put(rows[0]); err != nil {
			t.Fatal(err)
		}
	}
	over := Chunk{Name: metas[0].Name, DType: "float32", Shape: "3,5", Offset: metas[0].Bytes(), Data: []byte{1}}
	if err := u.Put(over); err == nil || !strings.Contains(err.Error(), "overruns") {
		t.Errorf("a piece past the tensor's end: %v", err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(up)
	if !bytes.Equal(a, b) {
		t.Fatalf("upload file (%d bytes) differs from WriteIPC's (%d bytes)", len(b), len(a))
	}
	if st, _ := os.Stat(up); st.Mode().Perm() != 0o600 {
		t.Errorf("upload mode %v, want 0600", st.Mode().Perm())
	}
}

// FuzzDecodeStream: any sequence of messages decodes or fails with
// ErrIPC; rows never reach outside the bytes received.
func FuzzDecodeStream(f *testing.F) {
	metas := testMetas()
	data := make([][]byte, len(metas))
	for i, m := range metas {
		data[i] = pattern(m.Bytes(), byte(i))
	}
	f.Add(frame(encodeSet(metas, data, 16)))
	f.Add(frame(encodeSet(metas[:1], data[:1], 1<<20)))
	m := metas[3]
	h, b := PieceMessage(m, 0, data[3])
	f.Add(frame([]piece{{SchemaHeader(), nil}, {patchLen(f, h, m.Bytes(), 1<<40), b}}))
	f.Fuzz(func(t *testing.T, in []byte) {
		msgs := unframe(in)
		var d StreamDecoder
		var rows []Chunk
		for _, p := range msgs {
			r, err := d.Next(p.header, p.body)
			if err != nil {
				if !errors.Is(err, ErrIPC) {
					t.Fatalf("error %v does not wrap ErrIPC", err)
				}
				return
			}
			for _, c := range r {
				if len(c.Data) > len(p.body) {
					t.Fatalf("row %q has %d bytes from a %d-byte body", c.Name, len(c.Data), len(p.body))
				}
			}
			rows = append(rows, r...)
		}
		_, _, _, _ = Assemble(rows)
	})
}
