// Package rng provides the counter-based random numbers that make npsfuse's
// random choices reproducible bit for bit whatever the thread count.
//
// A stream is identified by a Key derived from (seed, tensor name, model
// index) — never from scheduling order — and element i of the stream is a
// pure function of (key, i), so any goroutine can compute any element.
//
// The definition, which the Python tests re-implement, is:
//
//	mix(z)          = SplitMix64 finaliser of z (Steele, Lea, Flood 2014)
//	Key(s, name, m) = mix(mix(s ^ FNV1a64(name)) + m)
//	Bits(k, i)      = mix(k + (i+1)·0x9E3779B97F4A7C15)
//	Uniform(k, i)   = (Bits(k, i) >> 40) · 2⁻²⁴   ∈ [0, 1), float32-exact
package rng

// Golden is 2⁶⁴/φ, the stride of Bits' Weyl sequence.
const Golden = 0x9E3779B97F4A7C15

const golden uint64 = Golden

// Mix is the SplitMix64 output function: a bijective 64-bit mixer.
func Mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// FNV1a64 hashes a string with 64-bit FNV-1a.
func FNV1a64(s string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001b3
	}
	return h
}

// Key derives the stream of model index model for the tensor called name.
func Key(seed uint64, name string, model int) uint64 {
	return Mix(Mix(seed^FNV1a64(name)) + uint64(model))
}

// Bits is element i of stream key: 64 uniformly distributed bits.
func Bits(key, i uint64) uint64 { return Mix(key + (i+1)*golden) }

// Uniform is element i of stream key as a float32 in [0, 1) with 24 random
// bits (every value is exactly representable, so comparisons with a
// threshold agree between Go and NumPy).
func Uniform(key, i uint64) float32 {
	return float32(Bits(key, i)>>40) * (1.0 / (1 << 24))
}
