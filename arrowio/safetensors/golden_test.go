package safetensors

import (
	"bytes"
	"encoding/binary"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.safetensors from the hand-built bytes")

const goldenPath = "testdata/golden.safetensors"

// goldenHeader is the header the reference writer produces for goldenTensors
// (I64 before F32 before F16; "__metadata__" first; compact JSON).
const goldenHeader = `{"__metadata__":{"format":"pt"},` +
	`"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},` +
	`"weight":{"dtype":"F32","shape":[2,2],"data_offsets":[24,40]},` +
	`"b":{"dtype":"F16","shape":[2],"data_offsets":[40,44]}}`

// goldenBytes assembles the golden file byte by byte from the format
// description.
func goldenBytes() []byte {
	hdr := goldenHeader
	for len(hdr)%8 != 0 { // pad with spaces: data starts 8-byte aligned
		hdr += " "
	}
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, uint64(len(hdr)))
	b = append(b, hdr...)
	b = append(b,
		// ids, I64 little-endian: 1, -1, 2^40
		0x01, 0, 0, 0, 0, 0, 0, 0,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0, 0, 0, 0, 0, 0x01, 0, 0,
		// weight, F32 little-endian, row-major [[1, -2], [0.5, 3]]
		0x00, 0x00, 0x80, 0x3f, // 1.0  = 0x3f800000
		0x00, 0x00, 0x00, 0xc0, // -2.0 = 0xc0000000
		0x00, 0x00, 0x00, 0x3f, // 0.5  = 0x3f000000
		0x00, 0x00, 0x40, 0x40, // 3.0  = 0x40400000
		// b, F16 little-endian: 1.0 = 0x3c00, -2.0 = 0xc000
		0x00, 0x3c, 0x00, 0xc0,
	)
	return b
}

func goldenTensors() map[string]Tensor {
	g := goldenBytes()
	d := g[len(g)-44:]
	return map[string]Tensor{
		"ids":    {DType: I64, Shape: []int64{3}, Data: d[0:24]},
		"weight": {DType: F32, Shape: []int64{2, 2}, Data: d[24:40]},
		"b":      {DType: F16, Shape: []int64{2}, Data: d[40:44]},
	}
}

func TestGolden(t *testing.T) {
	want := goldenBytes()
	if *update {
		if err := os.WriteFile(goldenPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the hand-built bytes (run go test -run TestGolden -update)", goldenPath)
	}
	// 205 bytes of JSON + 3 spaces of padding, then 44 bytes of data.
	if len(want) != 8+208+44 || binary.LittleEndian.Uint64(want) != 208 || string(want[8+205:8+208]) != "   " {
		t.Fatalf("golden layout: %d bytes, header %d", len(want), binary.LittleEndian.Uint64(want))
	}

	f, err := Open(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := strings.Join(f.Names(), ","); got != "b,ids,weight" {
		t.Errorf("Names = %s", got)
	}
	if m := f.Metadata(); len(m) != 1 || m["format"] != "pt" {
		t.Errorf("Metadata = %v", m)
	}
	ids, _ := f.Bytes("ids")
	for i, w := range []int64{1, -1, 1 << 40} {
		if v := int64(binary.LittleEndian.Uint64(ids[8*i:])); v != w {
			t.Errorf("ids[%d] = %d, want %d", i, v, w)
		}
	}
	wt, _ := f.Bytes("weight")
	for i, w := range []float32{1, -2, 0.5, 3} {
		if v := math.Float32frombits(binary.LittleEndian.Uint32(wt[4*i:])); v != w {
			t.Errorf("weight[%d] = %g, want %g", i, v, w)
		}
	}
	bias, _ := f.Bytes("b")
	for i, w := range []uint16{0x3c00, 0xc000} {
		if v := binary.LittleEndian.Uint16(bias[2*i:]); v != w {
			t.Errorf("b[%d] bits = %#04x, want %#04x", i, v, w)
		}
	}

	// The writer reproduces the golden file byte for byte.
	out := filepath.Join(t.TempDir(), "g.safetensors")
	if err := Save(out, goldenTensors(), map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("Save output differs from the golden file:\n%q\n%q", b, want)
	}
}
