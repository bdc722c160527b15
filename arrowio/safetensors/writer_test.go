package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// dirEntries lists the names in dir, to detect leftover temporary files.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// randTensor returns a tensor of dtype d and shape with reproducible bytes.
func randTensor(r *rand.Rand, d DType, shape ...int64) Tensor {
	n, err := ByteSize(d, shape)
	if err != nil {
		panic(err)
	}
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(r.IntN(256))
	}
	return Tensor{DType: d, Shape: shape, Data: data}
}

func TestSaveRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name    string
		tensors map[string]Tensor
		meta    map[string]string
	}{
		{"empty", map[string]Tensor{}, nil},
		{"metadata only", map[string]Tensor{}, map[string]string{"format": "pt", "note": `quote " backslash \ <&> é`}},
		{"empty metadata", map[string]Tensor{"a": randTensor(r, F32, 3)}, map[string]string{}},
		{"every dtype", func() map[string]Tensor {
			m := map[string]Tensor{}
			for d := BOOL; d < numDTypes; d++ {
				m["t."+d.String()] = randTensor(r, d, 2, 4)
			}
			return m
		}(), map[string]string{"k": "v"}},
		{"scalars and empties", map[string]Tensor{
			"scalar": randTensor(r, F64), "empty": randTensor(r, F32, 0, 5), "vec": randTensor(r, I8, 7),
		}, nil},
		{"awkward names", map[string]Tensor{
			"": randTensor(r, U8, 1), "with \"quotes\"": randTensor(r, U8, 2), "ünï<&>\n": randTensor(r, BF16, 3),
			"model.layers.0.self_attn.q_proj.weight": randTensor(r, F16, 4, 4),
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "m.safetensors")
			if err := Save(path, c.tensors, c.meta); err != nil {
				t.Fatal(err)
			}
			if got := dirEntries(t, dir); !slices.Equal(got, []string{"m.safetensors"}) {
				t.Errorf("directory holds %q, want only the file", got)
			}
			f, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.DataOffset()%8 != 0 {
				t.Errorf("DataOffset %d not 8-byte aligned", f.DataOffset())
			}
			if f.Len() != len(c.tensors) {
				t.Errorf("Len = %d, want %d", f.Len(), len(c.tensors))
			}
			for n, want := range c.tensors {
				got, err := f.Tensor(n)
				if err != nil {
					t.Fatal(err)
				}
				if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) && !(len(got.Shape) == 0 && len(want.Shape) == 0) ||
					!bytes.Equal(got.Data, want.Data) {
					t.Errorf("tensor %q: got %v %v %d bytes, want %v %v %d bytes", n, got.DType, got.Shape, len(got.Data),
						want.DType, want.Shape, len(want.Data))
				}
				// Save orders by decreasing alignment, so each tensor starts at a
				// file offset that is a multiple of its element size.
				info, _ := f.Info(n)
				if sz := int64(want.DType.Size()); sz > 0 && (f.DataOffset()+info.Begin)%sz != 0 {
					t.Errorf("tensor %q at file offset %d not aligned to %d", n, f.DataOffset()+info.Begin, sz)
				}
			}
			meta := f.Metadata()
			if (meta == nil) != (c.meta == nil) || len(meta) != len(c.meta) {
				t.Fatalf("Metadata = %#v, want %#v", meta, c.meta)
			}
			for k, v := range c.meta {
				if meta[k] != v {
					t.Errorf("Metadata[%q] = %q, want %q", k, meta[k], v)
				}
			}
		})
	}
}

// The reference writer's layout: decreasing dtype (in the reference enum
// order), then name.
func TestSaveOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	tensors := map[string]Tensor{
		"b": randTensor(r, F32, 1), "a": randTensor(r, F64, 1), "c": randTensor(r, U8, 3),
		"d": randTensor(r, F32, 2), "e": randTensor(r, I64, 1), "f": randTensor(r, BOOL, 1), "g": randTensor(r, BF16, 1),
	}
	path := filepath.Join(t.TempDir(), "o.safetensors")
	if err := Save(path, tensors, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// I64 > F64 > F32 (b, d) > BF16 > U8 > BOOL; sizes 8,8,4,8,2,3,1.
	wantBegin := map[string]int64{"e": 0, "a": 8, "b": 16, "d": 20, "g": 28, "c": 30, "f": 33}
	for n, b := range wantBegin {
		if info, _ := f.Info(n); info.Begin != b {
			t.Errorf("tensor %q begins at %d, want %d", n, info.Begin, b)
		}
	}
}

// The header is padded with spaces so the data section starts at a multiple
// of 8, whatever the JSON length.
func TestHeaderAlignment(t *testing.T) {
	for l := 1; l <= 16; l++ {
		name := strings.Repeat("x", l)
		path := filepath.Join(t.TempDir(), "a.safetensors")
		if err := Save(path, map[string]Tensor{name: {DType: U8, Shape: []int64{1}, Data: []byte{9}}}, nil); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		n := binary.LittleEndian.Uint64(raw)
		if n%8 != 0 || uint64(len(raw)) != 8+n+1 || raw[len(raw)-1] != 9 {
			t.Fatalf("name length %d: header length %d, file length %d", l, n, len(raw))
		}
		hdr := raw[8 : 8+n]
		json := `{"` + name + `":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`
		pad := (8 - len(json)%8) % 8
		if string(hdr) != json+strings.Repeat(" ", pad) {
			t.Fatalf("name length %d: header %q, want %q + %d spaces", l, hdr, json, pad)
		}
	}
}

func TestWriterStreaming(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	tensors := []Tensor{randTensor(r, F32, 64, 33), randTensor(r, F16, 1000), randTensor(r, U8, 17), randTensor(r, I64, 0)}
	infos := make([]TensorInfo, len(tensors))
	for i, tt := range tensors {
		infos[i] = TensorInfo{Name: string(rune('a' + i)), DType: tt.DType, Shape: tt.Shape, Begin: -5, End: -7}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "s.safetensors")
	w, err := NewWriter(path, infos, map[string]string{"x": "y"})
	if err != nil {
		t.Fatal(err)
	}
	if w.DataOffset()%8 != 0 {
		t.Errorf("DataOffset %d", w.DataOffset())
	}
	// Layout in the given order, Begin/End of the input ignored.
	var off int64
	for i, ti := range w.Tensors() {
		n := int64(len(tensors[i].Data))
		if ti.Name != infos[i].Name || ti.Begin != off || ti.End != off+n {
			t.Errorf("layout %d = %+v, want [%d, %d]", i, ti, off, off+n)
		}
		off += n
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("path exists before Close: %v", err)
	}
	// Write in reverse order, concurrently, in uneven chunks.
	var wg sync.WaitGroup
	errs := make([]error, len(tensors))
	for i := len(tensors) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tw, err := w.TensorWriter(infos[i].Name)
			if err != nil {
				errs[i] = err
				return
			}
			data := tensors[i].Data
			for chunk := 1; len(data) > 0; chunk = chunk*3 + 1 {
				k := min(chunk, len(data))
				if _, err := tw.Write(data[:k]); err != nil {
					errs[i] = err
					return
				}
				data = data[k:]
			}
			if tw.Remaining() != 0 {
				errs[i] = errors.New("remaining bytes")
			}
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := dirEntries(t, dir); !slices.Equal(got, []string{"s.safetensors"}) {
		t.Errorf("directory holds %q", got)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, tt := range tensors {
		b, err := f.Bytes(infos[i].Name)
		if err != nil || !bytes.Equal(b, tt.Data) {
			t.Errorf("tensor %q differs: %v", infos[i].Name, err)
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, %v", st.Mode(), err)
	}
}

func TestNewWriterRejects(t *testing.T) {
	f32 := func(name string, shape ...int64) TensorInfo { return TensorInfo{Name: name, DType: F32, Shape: shape} }
	cases := []struct {
		name      string
		tensors   []TensorInfo
		meta      map[string]string
		kind      error
		hasTensor bool
		tensor    string
		msg       string
	}{
		{"duplicate name", []TensorInfo{f32("a", 1), f32("b", 1), f32("a", 2)}, nil, ErrDuplicate, true, "a", "name given twice"},
		{"reserved name", []TensorInfo{f32("__metadata__", 1)}, nil, ErrBadHeader, true, "__metadata__", "reserved"},
		{"invalid UTF-8 name", []TensorInfo{f32("\xff", 1)}, nil, ErrBadHeader, true, "\xff", "not valid UTF-8"},
		{"invalid UTF-8 metadata", nil, map[string]string{"k": "\xfe"}, ErrBadHeader, false, "", `metadata entry "k"`},
		{"zero dtype", []TensorInfo{{Name: "z", Shape: []int64{1}}}, nil, ErrDType, true, "z", "invalid dtype DType(0)"},
		{"negative dim", []TensorInfo{f32("n", 3, -2)}, nil, ErrShape, true, "n", "shape [3, -2] has negative dimension 1"},
		{"size overflow", []TensorInfo{f32("o", 1<<62, 4)}, nil, ErrSizeMismatch, true, "o", "needs more than 2^63-1 bytes"},
		{"total overflow", []TensorInfo{{Name: "p", DType: U8, Shape: []int64{1 << 62}}, {Name: "q", DType: U8, Shape: []int64{1 << 62}}},
			nil, ErrSizeMismatch, true, "q", "exceed 2^63-1 bytes"},
		{"header over 100 MB", nil, map[string]string{"big": strings.Repeat("x", MaxHeaderSize)}, ErrHeaderTooLarge, false, "", "over the 100000000-byte limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "w.safetensors")
			w, err := NewWriter(path, c.tensors, c.meta)
			if err == nil {
				w.Abort()
			}
			checkErr(t, err, c.kind, path, c.hasTensor, c.tensor, c.msg)
			if got := dirEntries(t, dir); len(got) != 0 {
				t.Errorf("directory holds %q after a failed NewWriter", got)
			}
		})
	}
	_, err := NewWriter(filepath.Join(t.TempDir(), "no", "such", "dir.safetensors"), nil, nil)
	if !errors.Is(err, ErrIO) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NewWriter in a missing directory: %v", err)
	}
}

// Each case misuses a Writer over tensors a (F32 [2,2], 16 bytes) and
// b (U8 [3]); Close must fail naming the tensor and leave nothing behind.
func TestWriterFailuresLeaveNothing(t *testing.T) {
	infos := []TensorInfo{{Name: "a", DType: F32, Shape: []int64{2, 2}}, {Name: "b", DType: U8, Shape: []int64{3}}}
	full := map[string][]byte{"a": bytes.Repeat([]byte{1}, 16), "b": {1, 2, 3}}
	cases := []struct {
		name string
		act  func(t *testing.T, w *Writer, path string)
		// error expected from Close
		kind   error
		tensor string
		msg    string
	}{
		{"missing tensor", func(t *testing.T, w *Writer, path string) {
			if err := w.WriteTensor("b", full["b"]); err != nil {
				t.Fatal(err)
			}
		}, ErrIncomplete, "a", "0 of 16 bytes written"},
		{"nothing written", func(t *testing.T, w *Writer, path string) {}, ErrIncomplete, "a", "(and 1 more incomplete tensors)"},
		{"short WriteTensor", func(t *testing.T, w *Writer, path string) {
			checkErr(t, w.WriteTensor("a", full["a"][:12]), ErrSizeMismatch, path, true, "a", "got 12 bytes, dtype F32 shape [2, 2] needs 16")
			_ = w.WriteTensor("b", full["b"])
		}, ErrIncomplete, "a", "0 of 16 bytes written"},
		{"long WriteTensor", func(t *testing.T, w *Writer, path string) {
			checkErr(t, w.WriteTensor("b", []byte{1, 2, 3, 4}), ErrSizeMismatch, path, true, "b", "got 4 bytes")
			_ = w.WriteTensor("a", full["a"])
		}, ErrIncomplete, "b", "0 of 3 bytes written"},
		{"partial stream", func(t *testing.T, w *Writer, path string) {
			_ = w.WriteTensor("b", full["b"])
			tw, err := w.TensorWriter("a")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write(full["a"][:8]); err != nil {
				t.Fatal(err)
			}
		}, ErrIncomplete, "a", "8 of 16 bytes written"},
		{"stream overrun", func(t *testing.T, w *Writer, path string) {
			_ = w.WriteTensor("a", full["a"])
			tw, err := w.TensorWriter("b")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write([]byte{1, 2}); err != nil {
				t.Fatal(err)
			}
			n, err := tw.Write([]byte{3, 4})
			checkErr(t, err, ErrSizeMismatch, path, true, "b", "writing 2 bytes at offset 2 overruns its 3 bytes")
			if n != 0 || tw.Remaining() != 1 {
				t.Errorf("overrun wrote %d bytes, %d remaining", n, tw.Remaining())
			}
		}, ErrIncomplete, "b", "2 of 3 bytes written"},
		{"unknown and repeated names", func(t *testing.T, w *Writer, path string) {
			checkErr(t, w.WriteTensor("zzz", nil), ErrNotFound, path, true, "zzz", "not in the writer's tensor list")
			if err := w.WriteTensor("b", full["b"]); err != nil {
				t.Fatal(err)
			}
			checkErr(t, w.WriteTensor("b", full["b"]), ErrDuplicate, path, true, "b", "already written")
			_, err := w.TensorWriter("b")
			checkErr(t, err, ErrDuplicate, path, true, "b", "already written")
		}, ErrIncomplete, "a", "0 of 16"},
	}
	for _, c := range cases {
		for _, existing := range []bool{false, true} {
			name := c.name
			if existing {
				name += " over existing file"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "w.safetensors")
				old := []byte("previous content")
				if existing {
					if err := os.WriteFile(path, old, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				w, err := NewWriter(path, infos, nil)
				if err != nil {
					t.Fatal(err)
				}
				c.act(t, w, path)
				checkErr(t, w.Close(), c.kind, path, true, c.tensor, c.msg)
				if existing {
					if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, old) {
						t.Errorf("existing file changed: %q, %v", got, err)
					}
					if got := dirEntries(t, dir); !slices.Equal(got, []string{"w.safetensors"}) {
						t.Errorf("directory holds %q", got)
					}
				} else if got := dirEntries(t, dir); len(got) != 0 {
					t.Errorf("directory holds %q after a failed Close", got)
				}
				// The writer is finished: everything now fails with ErrClosed.
				checkErr(t, w.Close(), ErrClosed, path, false, "", "already closed")
				checkErr(t, w.WriteTensor("b", full["b"]), ErrClosed, path, true, "b", "writer is closed")
				if err := w.Abort(); err != nil {
					t.Errorf("Abort after Close: %v", err)
				}
			})
		}
	}
}

func TestAbort(t *testing.T) {
	for _, existing := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "a.safetensors")
		if existing {
			if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		w, err := NewWriter(path, []TensorInfo{{Name: "x", DType: U8, Shape: []int64{2}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteTensor("x", []byte{1, 2}); err != nil {
			t.Fatal(err)
		}
		if got := dirEntries(t, dir); len(got) != map[bool]int{false: 1, true: 2}[existing] ||
			!slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "a.safetensors.tmp-") }) {
			t.Errorf("before Abort the directory holds %q, want the temporary file", got)
		}
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		got := dirEntries(t, dir)
		if existing {
			if b, err := os.ReadFile(path); err != nil || string(b) != "old" || len(got) != 1 {
				t.Errorf("after Abort: %q %v, directory %q", b, err, got)
			}
		} else if len(got) != 0 {
			t.Errorf("after Abort the directory holds %q", got)
		}
		if err := w.Abort(); err != nil {
			t.Errorf("second Abort: %v", err)
		}
		checkErr(t, w.Close(), ErrClosed, path, false, "", "already closed")
		_, err = w.TensorWriter("x")
		checkErr(t, err, ErrClosed, path, true, "x", "writer is closed")
	}
}

func TestCloseReplacesExisting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r.safetensors")
	if err := os.WriteFile(path, []byte("old content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Save(path, map[string]Tensor{"v": {DType: I16, Shape: []int64{2}, Data: []byte{1, 0, 2, 0}}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b, err := f.Bytes("v"); err != nil || !bytes.Equal(b, []byte{1, 0, 2, 0}) {
		t.Errorf("Bytes = %v, %v", b, err)
	}
}

func TestSaveRejectsBadData(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	err := Save(path, map[string]Tensor{
		"good": {DType: F32, Shape: []int64{1}, Data: make([]byte, 4)},
		"bad":  {DType: F32, Shape: []int64{2, 3}, Data: make([]byte, 20)},
	}, nil)
	checkErr(t, err, ErrSizeMismatch, path, true, "bad", "got 20 bytes, dtype F32 shape [2, 3] needs 24")
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Errorf("directory holds %q", got)
	}
	err = Save(path, map[string]Tensor{"neg": {DType: F32, Shape: []int64{-1}}}, nil)
	checkErr(t, err, ErrShape, path, true, "neg", "shape [-1] has negative dimension 0")
}
