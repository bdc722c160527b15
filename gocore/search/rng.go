package search

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// RNG is the package's pseudo-random generator: xoshiro256** (Blackman &
// Vigna, "Scrambled linear pseudorandom number generators", 2018) seeded by
// SplitMix64. Its whole state is four uint64 words (see State and SetState),
// so a search can be stopped and resumed bit for bit. An RNG is not safe for
// concurrent use.
type RNG struct {
	s [4]uint64
}

// NewRNG returns a generator seeded with seed: the four state words are the
// first four outputs of SplitMix64 started at seed (never all zero).
func NewRNG(seed uint64) *RNG {
	r := &RNG{}
	x := seed
	for i := range r.s {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		r.s[i] = z ^ (z >> 31)
	}
	if r.s == [4]uint64{} { // unreachable for SplitMix64, kept as a guard
		r.s[0] = 1
	}
	return r
}

// Uint64 returns the next 64 uniformly distributed bits. O(1).
func (r *RNG) Uint64() uint64 {
	s := &r.s
	var out uint64
	out, s[0], s[1], s[2], s[3] = Step(s[0], s[1], s[2], s[3])
	return out
}

// Step is one step of RNG's generator (xoshiro256**) on a state held in
// variables: the output and the next state. RNG.Uint64 is Step on the RNG's
// state; a kernel drawing many words in a tight loop keeps the state in
// registers with it (RNG.State, Step…, RNG.SetState).
func Step(s0, s1, s2, s3 uint64) (out, n0, n1, n2, n3 uint64) {
	out = bits.RotateLeft64(s1*5, 7) * 9
	t := s1 << 17
	s2 ^= s0
	s3 ^= s1
	s1 ^= s2
	s0 ^= s3
	s2 ^= t
	return out, s0, s1, s2, bits.RotateLeft64(s3, 45)
}

// Float64 returns a uniform value in [0, 1): the top 53 bits of one Uint64
// scaled by 2⁻⁵³. Consumes exactly one Uint64.
func (r *RNG) Float64() float64 {
	return float64(r.Uint64()>>11) * 0x1p-53
}

// IntN returns a uniform integer in [0, n) by Lemire's multiply-and-reject
// method (unbiased; usually one Uint64, more on rare rejections). It panics if
// n <= 0.
func (r *RNG) IntN(n int) int {
	if n <= 0 {
		panic(fmt.Sprintf("search: RNG.IntN(%d): n must be positive", n))
	}
	un := uint64(n)
	hi, lo := bits.Mul64(r.Uint64(), un)
	if lo < un {
		thresh := -un % un
		for lo < thresh {
			hi, lo = bits.Mul64(r.Uint64(), un)
		}
	}
	return int(hi)
}

// NormFloat64 returns a standard normal variate by the Box–Muller transform
// sqrt(−2 ln u₁)·cos(2π u₂) with u₁ ∈ (0, 1], u₂ ∈ [0, 1). Consumes exactly two
// Uint64 and keeps no cached second variate, so the state stays four words.
func (r *RNG) NormFloat64() float64 {
	u1 := 1 - r.Float64()
	u2 := r.Float64()
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}

// State returns a copy of the generator state.
func (r *RNG) State() RNGState { return RNGState(r.s) }

// SetState replaces the generator state. The all-zero state is invalid for
// xoshiro256** and is rejected.
func (r *RNG) SetState(s RNGState) error {
	if s == (RNGState{}) {
		return errors.New("search: RNG state is all zero")
	}
	r.s = s
	return nil
}

// RNGState is the four-word state of an RNG. In JSON (and any text encoding)
// it is a 64-character lower-case hex string: the four words in order, each
// as 16 big-endian hex digits.
type RNGState [4]uint64

// MarshalText encodes the state as 64 hex digits.
func (s RNGState) MarshalText() ([]byte, error) {
	var raw [32]byte
	for i, w := range s {
		for b := 0; b < 8; b++ {
			raw[i*8+b] = byte(w >> (56 - 8*b))
		}
	}
	out := make([]byte, 64)
	hex.Encode(out, raw[:])
	return out, nil
}

// UnmarshalText parses 64 hex digits (either case) as written by MarshalText.
// It rejects other lengths, non-hex characters and the all-zero state.
func (s *RNGState) UnmarshalText(text []byte) error {
	if len(text) != 64 {
		return fmt.Errorf("search: RNG state: want 64 hex digits, got %d characters", len(text))
	}
	var raw [32]byte
	if _, err := hex.Decode(raw[:], text); err != nil {
		return fmt.Errorf("search: RNG state: %w", err)
	}
	var out RNGState
	for i := range out {
		for b := 0; b < 8; b++ {
			out[i] = out[i]<<8 | uint64(raw[i*8+b])
		}
	}
	if out == (RNGState{}) {
		return errors.New("search: RNG state is all zero")
	}
	*s = out
	return nil
}
