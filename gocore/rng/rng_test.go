package rng

import (
	"math"
	"testing"
)

// Published test vectors: SplitMix64 seeded with 0 (Steele, Lea, Flood
// 2014; the reference C code's first outputs) and FNV-1a 64 (the FNV
// specification's test suite).
func TestKnownAnswers(t *testing.T) {
	for i, want := range []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f} {
		if got := Bits(0, uint64(i)); got != want {
			t.Errorf("Bits(0, %d) = %#016x, want %#016x (SplitMix64 from seed 0)", i, got, want)
		}
		if got := Mix(uint64(i+1) * Golden); got != want {
			t.Errorf("Mix(%d·Golden) = %#016x, want %#016x", i+1, got, want)
		}
	}
	for _, tc := range []struct {
		in   string
		want uint64
	}{{"", 0xcbf29ce484222325}, {"a", 0xaf63dc4c8601ec8c}, {"foobar", 0x85944171f73967e8}} {
		if got := FNV1a64(tc.in); got != tc.want {
			t.Errorf("FNV1a64(%q) = %#016x, want %#016x", tc.in, got, tc.want)
		}
	}
}

func TestKeyIsFunctionOfItsParts(t *testing.T) {
	k := Key(7, "h.0.mlp.weight", 1)
	if k != Mix(Mix(7^FNV1a64("h.0.mlp.weight"))+1) {
		t.Fatalf("Key differs from its documented definition")
	}
	seen := map[uint64]string{}
	for _, seed := range []uint64{0, 1, 7} {
		for _, name := range []string{"a", "b", "h.0.mlp.weight"} {
			for m := range 4 {
				key := Key(seed, name, m)
				if prev, dup := seen[key]; dup {
					t.Fatalf("Key(%d, %q, %d) collides with %s", seed, name, m, prev)
				}
				seen[key] = name
			}
		}
	}
}

func TestUniform(t *testing.T) {
	key := Key(1, "x", 0)
	const n = 200000
	var sum float64
	for i := range uint64(n) {
		u := Uniform(key, i)
		if u < 0 || u >= 1 {
			t.Fatalf("Uniform(%d) = %v outside [0, 1)", i, u)
		}
		// Every value is a multiple of 2⁻²⁴: exact in float32.
		if s := float64(u) * (1 << 24); s != math.Trunc(s) {
			t.Fatalf("Uniform(%d) = %v is not a multiple of 2⁻²⁴", i, u)
		}
		if float64(u) != float64(Bits(key, i)>>40)/(1<<24) {
			t.Fatalf("Uniform(%d) differs from Bits>>40 · 2⁻²⁴", i)
		}
		sum += float64(u)
	}
	// Mean 1/2 with standard error sqrt(1/12/n) ≈ 6.5e-4: 6 σ.
	if mean := sum / n; math.Abs(mean-0.5) > 0.004 {
		t.Fatalf("mean of %d draws = %v, want 0.5 ± 0.004", n, mean)
	}
}
