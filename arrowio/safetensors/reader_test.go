package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// badInput is a malformed file with the error Open must report.
type badInput struct {
	name      string
	file      []byte
	kind      error
	hasTensor bool
	tensor    string
	msg       string // substring of the message
	// pyAccepts marks the documented cases where the reference
	// implementation accepts what this package refuses.
	pyAccepts bool
}

const f32x1 = `{"dtype":"F32","shape":[1],"data_offsets":[0,4]}`

// badInputs lists one file per validation rule. It is shared by the unit
// test, the fuzz seed corpus and the reference-parity test.
func badInputs() []badInput {
	tn := func(name, file string, data []byte, kind error, tensor, msg string) badInput {
		return badInput{name: name, file: stFile(file, data), kind: kind, hasTensor: true, tensor: tensor, msg: msg}
	}
	fl := func(name string, file []byte, kind error, msg string) badInput {
		return badInput{name: name, file: file, kind: kind, msg: msg}
	}
	dup := tn("duplicate tensor", `{"a":`+f32x1+`,"a":`+f32x1+`}`, zeros(4), ErrDuplicate, "a", "name occurs twice")
	dup.pyAccepts = true
	dupMeta := fl("duplicate metadata key", stFile(`{"__metadata__":{"k":"1","k":"2"}}`, nil), ErrBadHeader, `key "k" occurs twice`)
	dupMeta.pyAccepts = true
	return []badInput{
		// Truncation and header length.
		fl("empty file", nil, ErrTruncated, "file holds 0 bytes"),
		fl("shorter than prefix", []byte{2, 0, 0, 0, 0, 0, 0}, ErrTruncated, "file holds 7 bytes"),
		fl("header length beyond file", stRaw(64, `{}`), ErrTruncated, "header length 64 runs past the end of the 10-byte file"),
		fl("header length one past file", stRaw(3, `{}`), ErrTruncated, "header length 3 runs past"),
		fl("header at limit but file short", stRaw(MaxHeaderSize, `{}`), ErrTruncated, "header length 100000000 runs past"),
		fl("header over 100 MB", stRaw(MaxHeaderSize+1, `{}`), ErrHeaderTooLarge, "header length 100000001 exceeds the 100000000-byte limit"),
		fl("header length 2^64-1", stRaw(math.MaxUint64, `{}`), ErrHeaderTooLarge, "exceeds"),
		// JSON syntax and structure.
		fl("empty header", stFile(``, nil), ErrBadHeader, "not valid JSON"),
		fl("invalid JSON", stFile(`{"a":{"dtype":"F32",`, nil), ErrBadHeader, "not valid JSON"),
		fl("invalid UTF-8", stFile("{\"\xff\":1}", nil), ErrBadHeader, "not valid UTF-8"),
		fl("header is array", stFile(`[]`, nil), ErrBadHeader, "header is an array, not a JSON object"),
		fl("header is string", stFile(`"x"`, nil), ErrBadHeader, "header is a string"),
		fl("two objects", stFile(`{}{}`, nil), ErrBadHeader, "data after the JSON object"),
		fl("NUL padding", stFile("{}\x00\x00\x00\x00\x00\x00", nil), ErrBadHeader, "data after the JSON object"),
		tn("entry is null", `{"a":null}`, nil, ErrBadHeader, "a", "entry is null, not an object"),
		tn("entry is number", `{"a":1}`, nil, ErrBadHeader, "a", "entry is a number"),
		tn("missing dtype", `{"a":{"shape":[1],"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `missing field "dtype"`),
		tn("missing shape", `{"a":{"dtype":"F32","data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `missing field "shape"`),
		tn("missing data_offsets", `{"a":{"dtype":"F32","shape":[1]}}`, zeros(4), ErrBadHeader, "a", `missing field "data_offsets"`),
		tn("field twice", `{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `field "dtype" occurs twice`),
		tn("dtype is number", `{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `"dtype" is a number, not a string`),
		tn("shape is string", `{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `"shape" is a string, not an array`),
		tn("shape is null", `{"a":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `"shape" is null`),
		tn("shape float", `{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", `dimension 0 is 1.0, not an integer`),
		tn("shape exponent", `{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", "not an integer"),
		tn("shape string dim", `{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}`, zeros(4), ErrBadHeader, "a", "not an integer"),
		tn("offsets three", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}`, zeros(4), ErrBadHeader, "a", "has 3 elements, want 2"),
		tn("offsets object", `{"a":{"dtype":"F32","shape":[1],"data_offsets":{}}}`, zeros(4), ErrBadHeader, "a", `"data_offsets" is an object`),
		tn("offset float", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}}`, zeros(4), ErrBadHeader, "a", "not an integer"),
		fl("metadata not object", stFile(`{"__metadata__":[]}`, nil), ErrBadHeader, `"__metadata__" is an array`),
		fl("metadata value not string", stFile(`{"__metadata__":{"k":1}}`, nil), ErrBadHeader, `value for "k" is a number, not a string`),
		fl("metadata twice", stFile(`{"__metadata__":{},"__metadata__":{}}`, nil), ErrBadHeader, "occurs twice"),
		dupMeta,
		dup,
		// dtype.
		tn("unknown dtype", `{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}`, zeros(4), ErrDType, "a", `unknown dtype "F33"`),
		tn("lower-case dtype", `{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}`, zeros(4), ErrDType, "a", `unknown dtype "f32"`),
		// shape.
		tn("negative dim", `{"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}}`, zeros(4), ErrShape, "w", "shape [2,-1] has negative dimension 1"),
		tn("minus zero dim", `{"w":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}`, nil, ErrShape, "w", "shape [-0] has negative dimension 0"),
		tn("dim over int64", `{"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]}}`, zeros(4), ErrShape, "w", "exceeds 2^63-1"),
		tn("dim over uint64", `{"w":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,4]}}`, zeros(4), ErrShape, "w", "exceeds 2^63-1"),
		// offsets.
		tn("negative offset", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, zeros(4), ErrOffsets, "a", "negative offset"),
		tn("begin after end", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`, zeros(4), ErrOffsets, "a", "data_offsets [4, 0]: begin > end"),
		tn("end beyond data", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, zeros(4), ErrOffsets, "a", "data_offsets [0, 8] end beyond the 4-byte data section"),
		tn("end beyond uint64", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}}`, zeros(4), ErrOffsets, "a", "offset 1 exceeds 2^64-1, beyond the 4-byte data section"),
		tn("overlapping", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, zeros(8),
			ErrOffsets, "b", `data_offsets [4, 8] overlap tensor "a" at [0, 8]`),
		tn("identical ranges", `{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, zeros(4),
			ErrOffsets, "b", `overlap tensor "a"`),
		tn("empty tensor inside another", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`, zeros(8),
			ErrOffsets, "z", `overlap tensor "a"`),
		tn("hole between tensors", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, zeros(12),
			ErrOffsets, "b", `leave a hole of 4 bytes after tensor "a" at [0, 4]`),
		tn("hole at start", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, zeros(8),
			ErrOffsets, "a", "leave a hole of 4 bytes after the start of the data section"),
		fl("trailing bytes", stFile(`{"a":`+f32x1+`}`, zeros(8)), ErrOffsets, "tensors cover 4 bytes but the data section holds 8"),
		fl("data without tensors", stFile(`{}`, zeros(1)), ErrOffsets, "1 trailing bytes"),
		// byte length.
		tn("shape times dtype mismatch", `{"layer.0.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}`, zeros(12),
			ErrSizeMismatch, "layer.0.weight", "data_offsets [0, 12] hold 12 bytes, dtype F32 shape [2, 2] needs 16"),
		tn("scalar too long", `{"s":{"dtype":"F64","shape":[],"data_offsets":[0,4]}}`, zeros(4),
			ErrSizeMismatch, "s", "dtype F64 shape [] needs 8"),
		tn("element count overflow", `{"o":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}`, nil,
			ErrSizeMismatch, "o", "needs more than 2^63-1 bytes"),
		tn("byte count overflow", `{"o":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}}`, nil,
			ErrSizeMismatch, "o", "needs more than 2^63-1 bytes"),
		tn("sub-byte remainder", `{"q":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, zeros(2),
			ErrSizeMismatch, "q", "not a whole number of bytes"),
	}
}

func TestOpenRejects(t *testing.T) {
	for _, c := range badInputs() {
		t.Run(c.name, func(t *testing.T) {
			path := writeTemp(t, "model.safetensors", c.file)
			f, err := Open(path)
			if err == nil {
				f.Close()
			}
			checkErr(t, err, c.kind, path, c.hasTensor, c.tensor, c.msg)
			f, err = OpenBytes(c.file, "mem.safetensors")
			if err == nil {
				f.Close()
			}
			checkErr(t, err, c.kind, "mem.safetensors", c.hasTensor, c.tensor, c.msg)
		})
	}
}

// The exact message given as an example in the package's specification.
func TestErrorMessageExact(t *testing.T) {
	b := stFile(`{"layer.0.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}`, zeros(12))
	_, err := OpenBytes(b, "/x/model.safetensors")
	want := `safetensors: /x/model.safetensors: tensor "layer.0.weight": data_offsets [0, 12] hold 12 bytes, dtype F32 shape [2, 2] needs 16`
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
}

func f32bytes(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// wantTensor is what Info and Bytes must report for one tensor.
type wantTensor struct {
	dtype DType
	shape []int64
	begin int64
	data  []byte
}

// goodInput is a valid hand-built file and its expected content.
type goodInput struct {
	name    string
	file    []byte
	tensors map[string]wantTensor
	meta    map[string]string
}

// goodInputs lists valid files covering the format's corners; shared with
// the fuzz corpus and the reference-parity test.
func goodInputs() []goodInput {
	return []goodInput{
		{"one F32 matrix", stFile(`{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}`, f32bytes(1, -2, 0.5, 3)),
			map[string]wantTensor{"w": {F32, []int64{2, 2}, 0, f32bytes(1, -2, 0.5, 3)}}, nil},
		{"empty header object", stFile(`{}`, nil), map[string]wantTensor{}, nil},
		{"padded header", stFile("{}      ", nil), map[string]wantTensor{}, nil},
		{"white space around", stFile(" \t\r\n{ } \n", nil), map[string]wantTensor{}, nil},
		{"scalar", stFile(`{"s":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}`, []byte{7, 0, 0, 0}),
			map[string]wantTensor{"s": {I32, []int64{}, 0, []byte{7, 0, 0, 0}}}, nil},
		{"zero-size tensors", stFile(`{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"z":{"dtype":"F64","shape":[0],"data_offsets":[0,0]}}`, []byte{1, 2}),
			map[string]wantTensor{
				"e": {F32, []int64{0, 3}, 2, []byte{}},
				"a": {U8, []int64{2}, 0, []byte{1, 2}},
				"z": {F64, []int64{0}, 0, []byte{}},
			}, nil},
		{"header order differs from data order", stFile(`{"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},"a":{"dtype":"I16","shape":[1],"data_offsets":[0,2]}}`, []byte{1, 2, 3}),
			map[string]wantTensor{"a": {I16, []int64{1}, 0, []byte{1, 2}}, "b": {U8, []int64{1}, 2, []byte{3}}}, nil},
		{"metadata and unknown entry keys", stFile(`{"__metadata__":{"format":"pt","k":"\u00e9\""},"t":{"dtype":"BF16","shape":[1],"data_offsets":[0,2],"extra":[1,{}]}}`, []byte{0x80, 0x3f}),
			map[string]wantTensor{"t": {BF16, []int64{1}, 0, []byte{0x80, 0x3f}}}, map[string]string{"format": "pt", "k": "é\""}},
		{"null metadata", stFile(`{"__metadata__":null}`, nil), map[string]wantTensor{}, nil},
		{"empty metadata", stFile(`{"__metadata__":{}}`, nil), map[string]wantTensor{}, map[string]string{}},
		{"escaped and empty names", stFile(`{"a\u0062":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, []byte{5, 6}),
			map[string]wantTensor{"ab": {U8, []int64{1}, 0, []byte{5}}, "": {U8, []int64{1}, 1, []byte{6}}}, nil},
		{"F4 pairs", stFile(`{"q":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}`, []byte{1, 2, 3}),
			map[string]wantTensor{"q": {F4, []int64{2, 3}, 0, []byte{1, 2, 3}}}, nil},
	}
}

func TestOpenAccepts(t *testing.T) {
	for _, c := range goodInputs() {
		t.Run(c.name, func(t *testing.T) {
			path := writeTemp(t, "ok.safetensors", c.file)
			for _, open := range []func() (*File, error){
				func() (*File, error) { return Open(path) },
				func() (*File, error) { return OpenBytes(c.file, "mem") },
			} {
				f, err := open()
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				for n := range c.tensors {
					names = append(names, n)
				}
				slices.Sort(names)
				if got := f.Names(); !slices.Equal(got, names) || f.Len() != len(names) {
					t.Errorf("Names = %q (Len %d), want %q", got, f.Len(), names)
				}
				hdrLen := int64(binary.LittleEndian.Uint64(c.file))
				if f.DataOffset() != 8+hdrLen {
					t.Errorf("DataOffset = %d, want %d", f.DataOffset(), 8+hdrLen)
				}
				for n, w := range c.tensors {
					info, ok := f.Info(n)
					if !ok || info.Name != n || info.DType != w.dtype || !slices.Equal(info.Shape, w.shape) ||
						info.Begin != w.begin || info.ByteLen() != int64(len(w.data)) {
						t.Errorf("Info(%q) = %+v, %v; want %+v", n, info, ok, w)
					}
					b, err := f.Bytes(n)
					if err != nil || !bytes.Equal(b, w.data) || cap(b) != len(b) {
						t.Errorf("Bytes(%q) = %v (cap %d), %v; want %v", n, b, cap(b), err, w.data)
					}
					tt, err := f.Tensor(n)
					if err != nil || tt.DType != w.dtype || !slices.Equal(tt.Shape, w.shape) || !bytes.Equal(tt.Data, w.data) {
						t.Errorf("Tensor(%q) = %+v, %v", n, tt, err)
					}
				}
				if got := f.Metadata(); (got == nil) != (c.meta == nil) || len(got) != len(c.meta) {
					t.Errorf("Metadata = %#v, want %#v", got, c.meta)
				} else {
					for k, v := range c.meta {
						if got[k] != v {
							t.Errorf("Metadata[%q] = %q, want %q", k, got[k], v)
						}
					}
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestInfoAndMetadataAreCopies(t *testing.T) {
	f, err := OpenBytes(stFile(`{"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, zeros(4)), "mem")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := f.Info("w")
	info.Shape[0] = 99
	f.Metadata()["k"] = "changed"
	f.Names()[0] = "changed"
	info2, _ := f.Info("w")
	if info2.Shape[0] != 1 || f.Metadata()["k"] != "v" || f.Names()[0] != "w" {
		t.Fatalf("internal state changed through returned values: %+v %v %v", info2, f.Metadata(), f.Names())
	}
}

func TestUseAfterClose(t *testing.T) {
	path := writeTemp(t, "c.safetensors", stFile(`{"w":`+f32x1+`}`, f32bytes(2.5)))
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Bytes("missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Bytes(missing) = %v, want ErrNotFound", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = f.Bytes("w")
	checkErr(t, err, ErrClosed, path, true, "w", "file is closed")
	_, err = f.Tensor("w")
	checkErr(t, err, ErrClosed, path, true, "w", "file is closed")
	checkErr(t, f.Close(), ErrClosed, path, false, "", "already closed")
	if info, ok := f.Info("w"); !ok || info.DType != F32 {
		t.Errorf("Info after Close = %+v, %v", info, ok)
	}
}

func TestOpenMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.safetensors")
	_, err := Open(path)
	checkErr(t, err, ErrIO, path, false, "", "no such file")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not wrap fs.ErrNotExist", err)
	}
	_, err = Open(t.TempDir())
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Open(dir) = %v", err)
	}
}
