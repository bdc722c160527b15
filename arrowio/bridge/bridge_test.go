package bridge

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/internal/cabi"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

func f32bytes(x ...float32) []byte {
	var b []byte
	for _, v := range x {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func u16bytes(x ...uint16) []byte {
	var b []byte
	for _, v := range x {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

func TestImportValid(t *testing.T) {
	specs := []cabi.Spec{
		{Format: "f", Name: "a", Length: 3, Buffers: [][]byte{nil, f32bytes(1, 2, 3)}},
		{Format: "e", Name: "b", Length: 2, Buffers: [][]byte{nil, u16bytes(0x3c00, 0xc000)}}, // 1, -2 in fp16
		{Format: "S", Name: "c", Length: 2, Metadata: map[string]string{DTypeKey: "bfloat16"}, Buffers: [][]byte{nil, u16bytes(0x3f80, 0x4040)}},
		{Format: "f", Name: "d", Length: 2, Offset: 1, Buffers: [][]byte{nil, f32bytes(9, 4, 5)}},
		{Format: "f", Name: "e", Length: 0, Buffers: [][]byte{nil, nil}},
	}
	p := cabi.New(specs)
	defer p.Free()
	b, err := ImportAt(p.Arrays(), p.Schemas(), len(specs))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{"a": {1, 2, 3}, "b": {1, -2}, "c": {1, 3}, "d": {4, 5}, "e": {}}
	wantDT := map[string]tensor.DType{"a": tensor.F32, "b": tensor.F16, "c": tensor.BF16, "d": tensor.F32, "e": tensor.F32}
	for _, tn := range b.Tensors {
		got := make([]float32, tn.Vec.Len())
		tn.Vec.Load(got, 0)
		if tn.Vec.DType != wantDT[tn.Name] || len(got) != len(want[tn.Name]) {
			t.Fatalf("%s: dtype %v len %d", tn.Name, tn.Vec.DType, len(got))
		}
		for i := range got {
			if got[i] != want[tn.Name][i] {
				t.Fatalf("%s: got %v want %v", tn.Name, got, want[tn.Name])
			}
		}
	}
	// Writes go to the producer's memory.
	b.Tensors[0].Vec.F32[0] = 42
	if b.Tensors[0].Vec.F32[0] != 42 {
		t.Fatal("write lost")
	}
	b.Release()
	for i := range specs {
		if !p.Released(i) {
			t.Fatalf("pair %d not released", i)
		}
	}
}

func TestImportRejects(t *testing.T) {
	good := cabi.Spec{Format: "f", Name: "ok", Length: 2, Buffers: [][]byte{nil, f32bytes(1, 2)}}
	cases := []struct {
		name string
		spec cabi.Spec
		want string
	}{
		{"float64", cabi.Spec{Format: "g", Name: "w", Length: 1, Buffers: [][]byte{nil, make([]byte, 8)}}, `tensor "w": unsupported Arrow format "g"`},
		{"int32", cabi.Spec{Format: "i", Name: "w", Length: 1, Buffers: [][]byte{nil, make([]byte, 4)}}, `unsupported Arrow format "i"`},
		{"uint16 without dtype", cabi.Spec{Format: "S", Name: "w", Length: 1, Buffers: [][]byte{nil, make([]byte, 2)}}, "needs field metadata npsfuse.dtype"},
		{"unknown dtype meta", cabi.Spec{Format: "S", Name: "w", Length: 1, Metadata: map[string]string{DTypeKey: "int16"}, Buffers: [][]byte{nil, make([]byte, 2)}}, `unsupported npsfuse.dtype "int16"`},
		{"contradicting meta", cabi.Spec{Format: "f", Name: "w", Length: 1, Metadata: map[string]string{DTypeKey: "bfloat16"}, Buffers: [][]byte{nil, make([]byte, 4)}}, "contradicts"},
		{"nulls", cabi.Spec{Format: "f", Name: "w", Length: 2, NullCount: 1, Buffers: [][]byte{{0b01}, f32bytes(1, 2)}}, `tensor "w" has 1 null entries`},
		{"null data buffer", cabi.Spec{Format: "f", Name: "w", Length: 2, Buffers: [][]byte{nil, nil}}, "invalid buffer"},
		{"one buffer", cabi.Spec{Format: "f", Name: "w", Length: 2, Buffers: [][]byte{nil}}, `tensor "w": 1 buffers`},
		{"bad format", cabi.Spec{Format: "zz", Name: "w", Length: 1, Buffers: [][]byte{nil, make([]byte, 4)}}, `tensor "w": unsupported Arrow format "zz"`},
		{"string", cabi.Spec{Format: "U", Name: "w", Length: 1, Buffers: [][]byte{nil, make([]byte, 16), make([]byte, 4)}}, `unsupported Arrow format "U"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			specs := []cabi.Spec{good, tc.spec, good}
			p := cabi.New(specs)
			defer p.Free()
			_, err := ImportAt(p.Arrays(), p.Schemas(), len(specs))
			if err == nil || !errors.Is(err, ErrTensor) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrTensor containing %q", err, tc.want)
			}
			for i := range specs {
				if !p.Released(i) {
					t.Fatalf("pair %d not released after error", i)
				}
			}
		})
	}
}

func FuzzImport(f *testing.F) {
	f.Add("f", uint16(3), int64(0), uint8(0), uint8(2), false, byte(0xff), "")
	f.Add("e", uint16(1), int64(0), uint8(1), uint8(2), false, byte(0xff), "float16")
	f.Add("S", uint16(2), int64(0), uint8(0), uint8(2), false, byte(0xff), "bfloat16")
	f.Add("S", uint16(2), int64(0), uint8(0), uint8(2), false, byte(0xff), "")
	f.Add("f", uint16(5), int64(2), uint8(0), uint8(2), false, byte(0x0f), "")
	f.Add("f", uint16(5), int64(-1), uint8(0), uint8(2), false, byte(0xff), "")
	f.Add("f", uint16(5), int64(0), uint8(0), uint8(2), true, byte(0xff), "")
	f.Add("g", uint16(1), int64(0), uint8(0), uint8(2), false, byte(0xff), "")
	f.Add("+l", uint16(1), int64(0), uint8(0), uint8(1), false, byte(0xff), "")
	f.Add("f", uint16(4), int64(0), uint8(0), uint8(0), false, byte(0xff), "")
	f.Fuzz(func(t *testing.T, format string, length uint16, nulls int64, offset uint8, nbufs uint8, nilData bool, validity byte, meta string) {
		if strings.IndexByte(format, 0) >= 0 || len(format) > 64 || nbufs > 4 {
			t.Skip()
		}
		// Buffers are always large enough for what the header claims: a
		// producer lying about sizes is outside what any consumer can detect.
		n := int(length) + int(offset)
		var bufs [][]byte
		for i := 0; i < int(nbufs); i++ {
			b := make([]byte, 8*n+8)
			for j := range b {
				b[j] = validity
			}
			if i == 1 && nilData {
				b = nil
			}
			bufs = append(bufs, b)
		}
		spec := cabi.Spec{Format: format, Name: "fz", Length: int64(length), NullCount: nulls, Offset: int64(offset), Buffers: bufs}
		if meta != "" {
			spec.Metadata = map[string]string{DTypeKey: meta}
		}
		p := cabi.New([]cabi.Spec{spec})
		defer p.Free()
		b, err := ImportAt(p.Arrays(), p.Schemas(), 1)
		if err == nil {
			if got := b.Tensors[0].Vec.Len(); got != int(length) {
				t.Fatalf("imported %d elements, header says %d", got, length)
			}
			b.Release()
		}
		if !p.Released(0) {
			t.Fatal("pair not released")
		}
	})
}

func TestImportShape(t *testing.T) {
	cases := []struct {
		meta  map[string]string
		shape []int
		tr    bool
		err   string
	}{
		{map[string]string{ShapeKey: "2,3"}, []int{2, 3}, false, ""},
		{map[string]string{ShapeKey: "6", TransposedKey: "1"}, []int{6}, true, ""},
		{nil, nil, false, ""},
		{map[string]string{ShapeKey: "2,2"}, nil, false, `tensor "w": shape [2,2] holds 4 elements, array has 6`},
		{map[string]string{ShapeKey: "2,x"}, nil, false, `bad npsfuse.shape "2,x"`},
	}
	for _, tc := range cases {
		p := cabi.New([]cabi.Spec{{Format: "f", Name: "w", Length: 6, Metadata: tc.meta, Buffers: [][]byte{nil, make([]byte, 24)}}})
		b, err := ImportAt(p.Arrays(), p.Schemas(), 1)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: got %v, want %q", tc.meta, err, tc.err)
			}
		case err != nil:
			t.Errorf("%v: %v", tc.meta, err)
		default:
			got := b.Tensors[0]
			if len(got.Shape) != len(tc.shape) || got.Transposed != tc.tr {
				t.Errorf("%v: got shape %v transposed %v", tc.meta, got.Shape, got.Transposed)
			}
			for i := range tc.shape {
				if got.Shape[i] != tc.shape[i] {
					t.Errorf("%v: got shape %v", tc.meta, got.Shape)
				}
			}
			b.Release()
		}
		if !p.Released(0) {
			t.Errorf("%v: not released", tc.meta)
		}
		p.Free()
	}
}
