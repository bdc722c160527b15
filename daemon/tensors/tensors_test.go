package tensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// pattern fills n bytes with a sequence that differs per tensor (seed).
func pattern(n int64, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)*7 + seed
	}
	return b
}

func testMetas() []Meta {
	return []Meta{
		{Name: "layer.0.weight", DType: safetensors.F32, Shape: []int64{3, 5}},
		{Name: "layer.0.bias", DType: safetensors.BF16, Shape: []int64{7}},
		{Name: "half", DType: safetensors.F16, Shape: []int64{2, 2, 3}},
		{Name: "ids", DType: safetensors.I64, Shape: []int64{1, 4}},
		{Name: "scalar", DType: safetensors.F64, Shape: []int64{}},
		{Name: "empty", DType: safetensors.F32, Shape: []int64{0, 3}},
		{Name: "mask", DType: safetensors.BOOL, Shape: []int64{3}},
	}
}

func writeTest(t *testing.T, metas []Meta) (string, [][]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "t.arrow")
	want := make([][]byte, len(metas))
	for i, m := range metas {
		want[i] = pattern(m.Bytes(), byte(i))
	}
	size, err := WriteIPC(path, metas, func(i int, dst []byte) error {
		copy(dst, want[i])
		return nil
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != size {
		t.Fatalf("file size %v, WriteIPC said %d (%v)", st, size, err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	return path, want
}

func TestIPCRoundTrip(t *testing.T) {
	metas := testMetas()
	path, want := writeTest(t, metas)
	src, err := OpenIPC(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got := strings.Join(src.Names(), " "); got != "layer.0.weight layer.0.bias half ids scalar empty mask" {
		t.Fatalf("names %q", got)
	}
	for i, m := range metas {
		gm, ok := src.Meta(m.Name)
		if !ok || gm.DType != m.DType || FormatShape(gm.Shape) != FormatShape(m.Shape) {
			t.Errorf("%s: meta %+v, want %+v", m.Name, gm, m)
		}
		b, err := src.Bytes(m.Name)
		if err != nil || !bytes.Equal(b, want[i]) {
			t.Errorf("%s: bytes differ (%v)", m.Name, err)
		}
		if len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%64 != 0 {
			t.Errorf("%s: data not 64-byte aligned", m.Name)
		}
	}
	if src.Copied != 0 {
		t.Errorf("copied %d bytes, want 0 (one row per tensor)", src.Copied)
	}
}

// TestParsePyarrowFile reads a file written by pyarrow's IPC writer (see
// testdata/README.md for the script): several rows per batch, a tensor in two
// pieces across batches, a scalar.
func TestParsePyarrowFile(t *testing.T) {
	src, err := OpenIPC("testdata/pyarrow.arrow")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got := strings.Join(src.Names(), " "); got != "a b h big s" {
		t.Fatalf("names %q, want \"a b h big s\"", got)
	}
	f32 := func(b []byte) []float32 {
		out := make([]float32, len(b)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out
	}
	a, _ := src.Bytes("a")
	if got := f32(a); len(got) != 6 || got[0] != 0 || got[5] != 5 {
		t.Errorf("a = %v, want 0..5", got)
	}
	b, _ := src.Bytes("b")
	if v := int64(binary.LittleEndian.Uint64(b[8:])); v != -2 {
		t.Errorf("b[1] = %d, want -2", v)
	}
	h, _ := src.Bytes("h")
	if !bytes.Equal(h, []byte{0x00, 0x3c, 0x00, 0xc0}) {
		t.Errorf("h = % x, want 00 3c 00 c0", h)
	}
	big, _ := src.Bytes("big")
	if got := f32(big); len(got) != 10 || got[3] != 3 || got[4] != 4 || got[9] != 9 {
		t.Errorf("big = %v, want 0..9", got)
	}
	if src.Copied != 40 {
		t.Errorf("copied %d bytes, want 40 (big arrives in two pieces)", src.Copied)
	}
	s, _ := src.Bytes("s")
	if m, _ := src.Meta("s"); len(m.Shape) != 0 || m.DType != safetensors.BOOL || !bytes.Equal(s, []byte{1}) {
		t.Errorf("s: %+v % x", m, s)
	}
}

func TestParseIPCRejects(t *testing.T) {
	path, _ := writeTest(t, testMetas()[:2])
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "magic"},
		{"truncated", good[:len(good)/2], "magic"},
		{"bad magic", corrupt(func(b []byte) []byte { b[0] = 'X'; return b }), "magic"},
		{"footer length", corrupt(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[len(b)-10:], 1<<30)
			return b
		}), "footer length"},
		{"short body", corrupt(func(b []byte) []byte {
			// Drop bytes in the middle: every offset after it is wrong.
			return append(b[:200:200], b[264:]...)
		}), ""},
	}
	for _, c := range cases {
		_, err := ParseIPC(c.b)
		if err == nil {
			t.Errorf("%s: parsed", c.name)
			continue
		}
		if !errors.Is(err, ErrIPC) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want ErrIPC mentioning %q", c.name, err, c.want)
		}
	}
}

func TestAssembleErrors(t *testing.T) {
	row := func(name, dt, shape string, off int64, n int) Chunk {
		return Chunk{Name: name, DType: dt, Shape: shape, Offset: off, Data: make([]byte, n)}
	}
	cases := []struct {
		name string
		rows []Chunk
		want string
	}{
		{"gap", []Chunk{row("x", "float32", "4", 0, 8), row("x", "float32", "4", 12, 4)}, "expected 8"},
		{"short", []Chunk{row("x", "float32", "4", 0, 8)}, "8 of its 16 bytes"},
		{"too long", []Chunk{row("x", "float32", "2", 0, 12)}, "more than its 8 bytes"},
		{"dtype change", []Chunk{row("x", "float32", "2", 0, 4), row("x", "float16", "2", 4, 4)}, "disagree"},
		{"unknown dtype", []Chunk{row("x", "complex64", "2", 0, 16)}, "unsupported dtype"},
		{"bad shape", []Chunk{row("x", "float32", "2,-1", 0, 0)}, "bad shape"},
		{"empty name", []Chunk{row("", "float32", "1", 0, 4)}, "empty name"},
		{"huge", []Chunk{row("x", "float64", "4294967296,4294967296", 0, 0)}, "too large"},
	}
	for _, c := range cases {
		_, _, _, err := Assemble(c.rows)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

func TestRecordRows(t *testing.T) {
	m := Meta{Name: "w", DType: safetensors.BF16, Shape: []int64{2, 3}}
	data := pattern(12, 3)
	rec := Record(m, 4, data[4:])
	defer rec.Release()
	rows, err := RowsOf(rec)
	if err != nil {
		t.Fatal(err)
	}
	want := Chunk{Name: "w", DType: "bfloat16", Shape: "2,3", Offset: 4, Data: data[4:]}
	if len(rows) != 1 || rows[0].Name != want.Name || rows[0].DType != want.DType || rows[0].Shape != want.Shape ||
		rows[0].Offset != want.Offset || !bytes.Equal(rows[0].Data, want.Data) {
		t.Errorf("rows %+v, want [%+v]", rows, want)
	}
}

func TestEachChunk(t *testing.T) {
	metas := []Meta{{Name: "a", DType: safetensors.U8, Shape: []int64{10}}, {Name: "z", DType: safetensors.U8, Shape: []int64{0}}}
	path, want := writeTest(t, metas)
	src, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var got []string
	err = EachChunk(src, src.Names(), 4, func(m Meta, off int64, d []byte) error {
		got = append(got, m.Name+":"+string(rune('0'+off))+":"+string(rune('0'+len(d))))
		if m.Name == "a" && !bytes.Equal(d, want[0][off:off+int64(len(d))]) {
			t.Errorf("piece at %d differs", off)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(got, " "); s != "a:0:4 a:4:4 a:8:2 z:0:0" {
		t.Errorf("pieces %s, want a:0:4 a:4:4 a:8:2 z:0:0", s)
	}
}

func TestUploadWriter(t *testing.T) {
	dir := t.TempDir()
	metas := []Meta{{Name: "w", DType: safetensors.F32, Shape: []int64{4}}, {Name: "e", DType: safetensors.F32, Shape: []int64{0}}}
	data := pattern(16, 1)
	u, err := NewUploadWriter(filepath.Join(dir, "u.arrow"), metas)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Put(Chunk{Name: "w", DType: "float32", Shape: "4", Offset: 8, Data: data[8:]}); err == nil {
		t.Error("out-of-order piece accepted")
	}
	if err := u.Put(Chunk{Name: "w", DType: "float16", Shape: "4", Offset: 0, Data: data[:8]}); err == nil {
		t.Error("piece with the wrong dtype accepted")
	}
	if err := u.Put(Chunk{Name: "v", DType: "float32", Shape: "4", Offset: 0, Data: data[:8]}); err == nil {
		t.Error("tensor outside the manifest accepted")
	}
	for _, off := range []int64{0, 8} {
		if err := u.Put(Chunk{Name: "w", DType: "float32", Shape: "4", Offset: off, Data: data[off : off+8]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	src, err := OpenIPC(filepath.Join(dir, "u.arrow"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if b, _ := src.Bytes("w"); !bytes.Equal(b, data) {
		t.Error("uploaded bytes differ")
	}
	// An incomplete upload fails at Close and leaves nothing behind.
	u2, err := NewUploadWriter(filepath.Join(dir, "v.arrow"), metas[:1])
	if err != nil {
		t.Fatal(err)
	}
	if err := u2.Put(Chunk{Name: "w", DType: "float32", Shape: "4", Data: data[:8]}); err != nil {
		t.Fatal(err)
	}
	if err := u2.Close(); err == nil {
		t.Error("incomplete upload closed without error")
	}
	if _, err := os.Stat(filepath.Join(dir, "v.arrow")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("incomplete upload left a file (%v)", err)
	}
}

func TestDTypesAndShapes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want safetensors.DType
	}{{"float32", safetensors.F32}, {"F32", safetensors.F32}, {"bfloat16", safetensors.BF16}, {"bool", safetensors.BOOL}, {"uint8", safetensors.U8}} {
		if d, err := ParseDType(c.in); err != nil || d != c.want {
			t.Errorf("ParseDType(%q) = %v, %v; want %v", c.in, d, err, c.want)
		}
	}
	for _, bad := range []string{"", "F8_E4M3", "complex64", "Float32"} {
		if _, err := ParseDType(bad); err == nil {
			t.Errorf("ParseDType(%q) accepted", bad)
		}
	}
	for _, c := range []struct {
		in   string
		want string
	}{{"", ""}, {"3", "3"}, {"2, 3", "2,3"}, {"0,1", "0,1"}} {
		s, err := ParseShape(c.in)
		if err != nil || FormatShape(s) != c.want {
			t.Errorf("ParseShape(%q) = %v, %v", c.in, s, err)
		}
	}
	for _, bad := range []string{"a", "1,,2", "-1", "1.5"} {
		if _, err := ParseShape(bad); err == nil {
			t.Errorf("ParseShape(%q) accepted", bad)
		}
	}
}

func TestParallelCopy(t *testing.T) {
	src := pattern(9<<20+13, 5)
	dst := make([]byte, len(src))
	ParallelCopy(dst, src)
	if !bytes.Equal(dst, src) {
		t.Fatal("ParallelCopy result differs")
	}
}

func FuzzParseIPC(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "seed.arrow")
	metas := testMetas()
	if _, err := WriteIPC(path, metas, func(i int, dst []byte) error { return nil }, false); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	golden, _ := os.ReadFile("testdata/pyarrow.arrow")
	f.Add(seed)
	f.Add(golden)
	f.Add(seed[:len(seed)-3])
	f.Add([]byte("ARROW1\x00\x00ARROW1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rows, err := ParseIPC(b)
		if err != nil {
			if !errors.Is(err, ErrIPC) {
				t.Fatalf("error %v does not wrap ErrIPC", err)
			}
			return
		}
		for _, r := range rows {
			if len(r.Data) > len(b) {
				t.Fatalf("row %q has %d bytes from a %d-byte file", r.Name, len(r.Data), len(b))
			}
		}
		_, _, _, _ = Assemble(rows)
	})
}
