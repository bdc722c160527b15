package search

import (
	"encoding/json"
	"math"
	"testing"
)

// Published reference outputs of xoshiro256** from state {1, 2, 3, 4}
// (as used by the reference implementation's test vectors).
var xoshiroRef = []uint64{11520, 0, 1509978240, 1215971899390074240, 1216172134540287360,
	607988272756665600, 16172922978634559625, 8476171486693032832, 10595114339597558777,
	2904607092377533576}

func refRNG(t testing.TB) *RNG {
	r := &RNG{}
	if err := r.SetState(RNGState{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRNGReferenceVectors(t *testing.T) {
	r := refRNG(t)
	for i, want := range xoshiroRef {
		if got := r.Uint64(); got != want {
			t.Fatalf("output %d: got %d, want %d", i, got, want)
		}
	}
	// SplitMix64 from 0: first outputs 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4,
	// 0x06c45d188009454f, 0xf88bb8a8724c81ec (reference values).
	want := RNGState{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f, 0xf88bb8a8724c81ec}
	if got := NewRNG(0).State(); got != want {
		t.Fatalf("NewRNG(0) state %x, want %x", got, want)
	}
}

func TestRNGDerivedDraws(t *testing.T) {
	r := refRNG(t)
	// Float64 is (x>>11)·2⁻⁵³: 11520>>11 = 5.
	if got, want := r.Float64(), 5*0x1p-53; got != want {
		t.Fatalf("Float64 = %v, want %v", got, want)
	}
	r = refRNG(t)
	for range 6 {
		r.Uint64()
	}
	// IntN(5) of output 7 = ⌊16172922978634559625·5/2⁶⁴⌋ = 4.
	if got := r.IntN(5); got != 4 {
		t.Fatalf("IntN(5) = %d, want 4", got)
	}
}

func TestRNGStatistics(t *testing.T) {
	// Fixed seed, so deterministic; tolerances are ~5 standard errors.
	r := NewRNG(42)
	const m = 200000
	var s, s2 float64
	for range m {
		v := r.NormFloat64()
		s += v
		s2 += v * v
	}
	mean, vr := s/m, s2/m-(s/m)*(s/m)
	if math.Abs(mean) > 5/math.Sqrt(m) || math.Abs(vr-1) > 5*math.Sqrt(2.0/m) {
		t.Fatalf("normal mean %v var %v", mean, vr)
	}
	counts := make([]int, 7)
	for range m {
		counts[r.IntN(7)]++
	}
	for k, c := range counts {
		exp := float64(m) / 7
		if math.Abs(float64(c)-exp) > 5*math.Sqrt(exp) {
			t.Fatalf("IntN(7) bucket %d count %d, expected %v", k, c, exp)
		}
	}
	for range 1000 {
		if u := r.Float64(); u < 0 || u >= 1 {
			t.Fatalf("Float64 out of [0,1): %v", u)
		}
	}
}

func TestRNGStateText(t *testing.T) {
	st := RNGState{1, 0xfedcba9876543210, 0, 1 << 63}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	want := `"0000000000000001fedcba987654321000000000000000008000000000000000"`
	if string(b) != want {
		t.Fatalf("json %s, want %s", b, want)
	}
	var back RNGState
	if err := json.Unmarshal(b, &back); err != nil || back != st {
		t.Fatalf("round trip %x, %v", back, err)
	}
	for _, bad := range []string{`""`, `"00"`, `"` + string(make([]byte, 64)) + `"`,
		`"0000000000000000000000000000000000000000000000000000000000000000"`,
		`"000000000000000g000000000000000000000000000000000000000000000001"`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if err := (&RNG{}).SetState(RNGState{}); err == nil {
		t.Error("SetState accepted the zero state")
	}
}

func FuzzRNGStateUnmarshalText(f *testing.F) {
	f.Add([]byte("0000000000000001fedcba987654321000000000000000008000000000000000"))
	f.Add([]byte("0000000000000000000000000000000000000000000000000000000000000000"))
	f.Add([]byte("xyz"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s RNGState
		if err := s.UnmarshalText(b); err != nil {
			return
		}
		out, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var s2 RNGState
		if err := s2.UnmarshalText(out); err != nil || s2 != s {
			t.Fatalf("re-parse %x vs %x: %v", s2, s, err)
		}
	})
}
