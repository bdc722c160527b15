package bridge

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestAdviseHugePagesKeepsContents: the advice never changes data, for
// small, large, misaligned and 16-bit views (whether the kernel grants huge
// pages is its business).
func TestAdviseHugePagesKeepsContents(t *testing.T) {
	big := make([]float32, HugePageMin/4+1000)
	for i := range big {
		big[i] = float32(i)
	}
	u16 := make([]uint16, HugePageMin)
	for i := range u16 {
		u16[i] = uint16(i)
	}
	tests := []struct {
		name string
		v    tensor.Vec
	}{
		{"empty", tensor.Vec{}},
		{"small", tensor.FromF32(big[:100])},
		{"large", tensor.FromF32(big)},
		{"misaligned", tensor.FromF32(big[3:])},
		{"bf16", tensor.Vec{DType: tensor.BF16, U16: u16[1:]}},
	}
	for _, tc := range tests {
		AdviseHugePages(tc.v)
	}
	for i, x := range big {
		if x != float32(i) {
			t.Fatalf("float32 entry %d changed to %v", i, x)
		}
	}
	for i, x := range u16 {
		if x != uint16(i) {
			t.Fatalf("uint16 entry %d changed to %v", i, x)
		}
	}
}
