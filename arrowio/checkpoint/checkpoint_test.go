package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// stFile assembles a safetensors file: the 8-byte little-endian length of
// header, the header, then data.
func stFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

// stRaw is a file whose length prefix says n, followed by rest.
func stRaw(n uint64, rest string) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, n), rest...)
}

func write(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// f32 is a tensor of n float32 zeros.
func f32(n int64) safetensors.Tensor {
	return safetensors.Tensor{DType: safetensors.F32, Shape: []int64{n}, Data: make([]byte, 4*n)}
}

// validFile is a two-tensor checkpoint as bytes.
func validFile(t testing.TB) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "v.safetensors")
	if err := safetensors.Save(p, map[string]safetensors.Tensor{"a": f32(4), "b": f32(2)}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Each kind of bad weight file is refused with an error that wraps
// ErrCheckpoint and the safetensors kind, names the file and, where one
// is at fault, the tensor — whether the folder or the file is opened.
func TestOpenBadFiles(t *testing.T) {
	valid := validFile(t)
	cases := []struct {
		name   string
		file   []byte
		kind   error
		tensor string // "" when no tensor is at fault
		msg    string
	}{
		{"empty file", nil, safetensors.ErrTruncated, "", "file holds 0 bytes"},
		{"not safetensors: text", []byte("this is a README, not weights\n"), safetensors.ErrHeaderTooLarge, "", "exceeds the 100000000-byte limit"},
		{"not safetensors: zip (torch .bin)", append([]byte("PK\x03\x04\x14\x00\x00\x00\x08\x00"), make([]byte, 64)...), safetensors.ErrHeaderTooLarge, "", "exceeds"},
		{"not safetensors: short", []byte("ab"), safetensors.ErrTruncated, "", "file holds 2 bytes"},
		{"truncated in the data", valid[:len(valid)-5], safetensors.ErrOffsets, "b", "data_offsets [16, 24] end beyond the 19-byte data section"},
		{"truncated in the header", valid[:20], safetensors.ErrTruncated, "", "runs past the end"},
		{"header length beyond the file", stRaw(4096, `{}`), safetensors.ErrTruncated, "", "header length 4096 runs past the end of the 10-byte file"},
		{"header over 100 MB", stRaw(100_000_001, `{}`), safetensors.ErrHeaderTooLarge, "", "header length 100000001 exceeds the 100000000-byte limit"},
		{"invalid JSON", stFile(`{"a": {"dtype": "F32",`, nil), safetensors.ErrBadHeader, "", "not valid JSON"},
		{"unknown dtype", stFile(`{"w":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), safetensors.ErrDType, "w", `unknown dtype "F31"`},
		{"offsets out of range", stFile(`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, make([]byte, 8)), safetensors.ErrOffsets, "w", "end beyond the 8-byte data section"},
		{"offsets overlapping", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)),
			safetensors.ErrOffsets, "b", `overlap tensor "a"`},
		{"shape times dtype not the byte length", stFile(`{"w":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,8]}}`, make([]byte, 8)),
			safetensors.ErrSizeMismatch, "w", "hold 8 bytes, dtype BF16 shape [3, 2] needs 12"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "model")
			file := write(t, filepath.Join(dir, SingleFile), c.file)
			for _, open := range []string{dir, file} {
				ck, err := Open(open)
				if err == nil {
					ck.Close()
					t.Fatalf("Open(%s) accepted it", open)
				}
				if !errors.Is(err, ErrCheckpoint) || !errors.Is(err, c.kind) {
					t.Errorf("error %q does not wrap ErrCheckpoint and %v", err, c.kind)
				}
				if !strings.Contains(err.Error(), file+": ") {
					t.Errorf("error %q does not name the file %s", err, file)
				}
				if c.tensor != "" && !strings.Contains(err.Error(), "tensor "+strconv.Quote(c.tensor)) {
					t.Errorf("error %q does not name tensor %q", err, c.tensor)
				}
				if !strings.Contains(err.Error(), c.msg) {
					t.Errorf("error %q does not contain %q", err, c.msg)
				}
			}
		})
	}
}

// Problems of the folder and its index are refused naming the folder or
// index and what is wrong.
func TestOpenBadFolders(t *testing.T) {
	one := map[string]safetensors.Tensor{"a": f32(2)}
	shard := func(t *testing.T, dir, name string, ts map[string]safetensors.Tensor) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := safetensors.Save(filepath.Join(dir, name), ts, nil); err != nil {
			t.Fatal(err)
		}
	}
	index := func(t *testing.T, dir, text string) {
		t.Helper()
		write(t, filepath.Join(dir, IndexFile), []byte(text))
	}
	s1, s2 := "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string // %d is the folder
	}{
		{"does not exist", func(*testing.T, string) {}, "%d: no such file or directory"},
		{"no weights", func(t *testing.T, dir string) { write(t, filepath.Join(dir, "config.json"), []byte("{}")) },
			"no safetensors weights in folder %d"},
		{"index not JSON", func(t *testing.T, dir string) { shard(t, dir, s1, one); index(t, dir, "{weight_map") },
			"%d/" + IndexFile + " is not a valid safetensors index: "},
		{"index without weight_map", func(t *testing.T, dir string) { shard(t, dir, s1, one); index(t, dir, `{"metadata": {}}`) },
			"%d/" + IndexFile + " is not a valid safetensors index: no weight_map"},
		{"index names a missing shard", func(t *testing.T, dir string) {
			shard(t, dir, s1, one)
			index(t, dir, `{"weight_map": {"a": "`+s1+`", "b": "`+s2+`"}}`)
		}, `%d/` + IndexFile + ` names shard "` + s2 + `", which does not exist`},
		{"index names a path", func(t *testing.T, dir string) {
			shard(t, dir, s1, one)
			index(t, dir, `{"weight_map": {"a": "../`+s1+`"}}`)
		}, `shard name "../` + s1 + `" must be a plain file name`},
		{"index lists a tensor no shard holds", func(t *testing.T, dir string) {
			shard(t, dir, s1, one)
			index(t, dir, `{"weight_map": {"a": "`+s1+`", "z": "`+s1+`"}}`)
		}, `%d/` + IndexFile + ` lists tensor "z", which no shard holds`},
		{"shards hold tensors the index lacks", func(t *testing.T, dir string) {
			shard(t, dir, s1, map[string]safetensors.Tensor{"a": f32(2), "c": f32(1)})
			index(t, dir, `{"weight_map": {"a": "`+s1+`"}}`)
		}, "lists 1 tensors but the shards hold 2"},
		{"tensor in two shards", func(t *testing.T, dir string) {
			shard(t, dir, s1, one)
			shard(t, dir, s2, map[string]safetensors.Tensor{"a": f32(2)})
		}, `tensor "a" is in both %d/` + s1 + ` and %d/` + s2},
		{"one bad shard", func(t *testing.T, dir string) {
			shard(t, dir, s1, one)
			write(t, filepath.Join(dir, s2), stRaw(999, "{}"))
			index(t, dir, `{"weight_map": {"a": "`+s1+`", "b": "`+s2+`"}}`)
		}, "safetensors: %d/" + s2 + ": header length 999 runs past the end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ckpt")
			c.setup(t, dir)
			ck, err := Open(dir)
			if err == nil {
				ck.Close()
				t.Fatal("accepted")
			}
			want := strings.ReplaceAll(c.want, "%d", dir)
			if !errors.Is(err, ErrCheckpoint) || !strings.Contains(err.Error(), want) {
				t.Errorf("error %q\nwant ErrCheckpoint containing %q", err, want)
			}
		})
	}
	t.Run("not a .safetensors file", func(t *testing.T) {
		p := write(t, filepath.Join(t.TempDir(), "pytorch_model.bin"), []byte("PK"))
		_, err := Open(p)
		if !errors.Is(err, ErrCheckpoint) || !strings.Contains(err.Error(), p+" is not a .safetensors file") {
			t.Errorf("error %v", err)
		}
	})
}

// A sharded checkpoint is served as one: names in order, each tensor from
// its shard, zero-copy; Advise keeps the data readable.
func TestOpenSharded(t *testing.T) {
	dir := t.TempDir()
	data := func(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }
	shards := map[string]map[string]safetensors.Tensor{
		"model-00001-of-00002.safetensors": {
			"b.weight": {DType: safetensors.BF16, Shape: []int64{2, 3}, Data: data(12, 1)},
			"a.bias":   {DType: safetensors.F32, Shape: []int64{2}, Data: data(8, 2)},
		},
		"model-00002-of-00002.safetensors": {
			"c.ids": {DType: safetensors.I64, Shape: []int64{1, 2}, Data: data(16, 3)},
		},
	}
	wm := map[string]string{}
	for file, ts := range shards {
		if err := safetensors.Save(filepath.Join(dir, file), ts, nil); err != nil {
			t.Fatal(err)
		}
		for n := range ts {
			wm[n] = file
		}
	}
	idx, _ := json.Marshal(map[string]any{"weight_map": wm})
	write(t, filepath.Join(dir, IndexFile), idx)
	// A stray weight file beside an index is ignored.
	if err := safetensors.Save(filepath.Join(dir, "consolidated.safetensors"), map[string]safetensors.Tensor{"x": f32(1)}, nil); err != nil {
		t.Fatal(err)
	}
	ck, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if got := ck.Names(); !slices.Equal(got, []string{"a.bias", "b.weight", "c.ids"}) {
		t.Errorf("Names = %q", got)
	}
	if ck.Dir != dir || ck.Path != dir {
		t.Errorf("Dir %q Path %q", ck.Dir, ck.Path)
	}
	for file, ts := range shards {
		for n, want := range ts {
			info, ok := ck.Info(n)
			if !ok || info.DType != want.DType || !slices.Equal(info.Shape, want.Shape) {
				t.Errorf("Info(%s) = %+v, %v", n, info, ok)
			}
			if got := ck.File(n); got != filepath.Join(dir, file) {
				t.Errorf("File(%s) = %s", n, got)
			}
			ck.Advise(n, WillNeed)
			b, err := ck.Bytes(n)
			if err != nil || !bytes.Equal(b, want.Data) {
				t.Errorf("Bytes(%s) = %v, %v", n, b, err)
			}
			ck.Advise(n, DontNeed)
			if b2, _ := ck.Bytes(n); !bytes.Equal(b2, want.Data) {
				t.Errorf("after DontNeed, Bytes(%s) = %v", n, b2)
			}
			// Location: the tensor's bytes, read from the file at that offset.
			path, off, ok := ck.Location(n)
			raw, rerr := os.ReadFile(path)
			if !ok || rerr != nil || path != filepath.Join(dir, file) || off+int64(len(want.Data)) > int64(len(raw)) ||
				!bytes.Equal(raw[off:off+int64(len(want.Data))], want.Data) {
				t.Errorf("Location(%s) = %s, %d, %v (%v)", n, path, off, ok, rerr)
			}
		}
	}
	if _, _, ok := ck.Location("nope"); ok {
		t.Error("Location(nope) is ok")
	}
	if _, ok := ck.Info("x"); ok {
		t.Error("the stray file's tensor is listed")
	}
	if _, err := ck.Bytes("nope"); !errors.Is(err, ErrCheckpoint) || !strings.Contains(err.Error(), `has no tensor "nope"`) {
		t.Errorf("Bytes(nope): %v", err)
	}
	if ck.File("nope") != "" {
		t.Error("File(nope) is not empty")
	}
	ck.Advise("nope", DontNeed) // no-op
	if err := ck.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ck.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// A single .safetensors file opens on its own; its folder is Dir.
func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "weights.safetensors")
	if err := os.WriteFile(p, validFile(t), 0o644); err != nil {
		t.Fatal(err)
	}
	ck, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if ck.Dir != dir || !slices.Equal(ck.Names(), []string{"a", "b"}) || ck.File("a") != p {
		t.Errorf("Dir %q Names %q File %q", ck.Dir, ck.Names(), ck.File("a"))
	}
}

// FuzzOpenIndex checks that any index text either opens a consistent
// checkpoint or is refused with ErrCheckpoint, never a panic.
func FuzzOpenIndex(f *testing.F) {
	s1, s2 := "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
	f.Add(`{"weight_map": {"a": "` + s1 + `", "b": "` + s2 + `"}}`)
	f.Add(`{"metadata": {"total_size": 24}, "weight_map": {"a": "` + s1 + `", "b": "` + s2 + `"}}`)
	f.Add(`{"weight_map": {"a": "` + s1 + `"}}`)
	f.Add(`{"weight_map": {"a": "` + s1 + `", "b": "` + s1 + `"}}`)
	f.Add(`{"weight_map": {"a": "../` + s1 + `"}}`)
	f.Add(`{"weight_map": {}}`)
	f.Add(`{"weight_map": null}`)
	f.Add(`{"weight_map": {"a": 1}}`)
	f.Add(`[]`)
	f.Add(`{`)
	dir := f.TempDir()
	if err := safetensors.Save(filepath.Join(dir, s1), map[string]safetensors.Tensor{"a": f32(4)}, nil); err != nil {
		f.Fatal(err)
	}
	if err := safetensors.Save(filepath.Join(dir, s2), map[string]safetensors.Tensor{"b": f32(2)}, nil); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text string) {
		d := t.TempDir()
		for _, s := range []string{s1, s2} {
			if err := os.Link(filepath.Join(dir, s), filepath.Join(d, s)); err != nil {
				t.Fatal(err)
			}
		}
		write(t, filepath.Join(d, IndexFile), []byte(text))
		ck, err := Open(d)
		if err != nil {
			if !errors.Is(err, ErrCheckpoint) {
				t.Fatalf("error %q does not wrap ErrCheckpoint", err)
			}
			return
		}
		defer ck.Close()
		names := ck.Names()
		if !slices.IsSorted(names) {
			t.Fatalf("names %q not sorted", names)
		}
		for _, n := range names {
			info, ok := ck.Info(n)
			b, err := ck.Bytes(n)
			if !ok || err != nil || int64(len(b)) != info.ByteLen() {
				t.Fatalf("tensor %q: info %+v %v, %d bytes, %v", n, info, ok, len(b), err)
			}
		}
	})
}

// Populate and AdviseBytes work on any part of a mapped tensor (unaligned
// starts and ends included) and leave its bytes readable and unchanged; the
// fallback for kernels without MADV_POPULATE_READ reads every page.
func TestPopulateAndAdviseBytes(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 3*os.Getpagesize()+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(dir, "model.safetensors")
	ts := map[string]safetensors.Tensor{
		"a": {DType: safetensors.U8, Shape: []int64{3}, Data: []byte{1, 2, 3}},
		"w": {DType: safetensors.U8, Shape: []int64{int64(len(data))}, Data: data},
	}
	if err := safetensors.Save(path, ts, nil); err != nil {
		t.Fatal(err)
	}
	ck, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	b, err := ck.Bytes("w")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int{{0, len(b)}, {1, 5}, {100, len(b) - 3}, {7, 7}} {
		part := b[r[0]:r[1]]
		AdviseBytes(part, WillNeed)
		Populate(part)
		AdviseBytes(part, DontNeed)
		if !bytes.Equal(part, data[r[0]:r[1]]) {
			t.Errorf("bytes [%d, %d) changed", r[0], r[1])
		}
	}
	Populate(nil)
	AdviseBytes(nil, DontNeed)
	// Resident: after a Populate every page holding the slice is cached;
	// the page count is that of the whole pages the slice touches.
	page := os.Getpagesize()
	Populate(b)
	for _, r := range [][2]int{{0, len(b)}, {1, 5}, {0, 1}} {
		part := b[r[0]:r[1]]
		start := int(uintptr(unsafe.Pointer(unsafe.SliceData(part))) % uintptr(page))
		want := (start + len(part) + page - 1) / page
		if in, all, ok := Resident(part); !ok || all != want || in != all {
			t.Errorf("Resident([%d, %d)) = %d of %d, %v; want %d of %d", r[0], r[1], in, all, ok, want, want)
		}
	}
	if in, all, ok := Resident(nil); in != 0 || all != 0 || !ok {
		t.Errorf("Resident(nil) = %d, %d, %v", in, all, ok)
	}
	var calls int
	failing := func([]byte, int) error { calls++; return errors.New("EINVAL") }
	populate(b[10:], failing)
	populate(nil, failing)
	if calls != 1 {
		t.Errorf("madvise called %d times, want 1 (not for an empty slice)", calls)
	}
	if !bytes.Equal(b, data) {
		t.Error("the fallback changed the bytes")
	}
}
