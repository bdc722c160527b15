package neuro

import "unsafe"

// This file forms the Gram matrix of [w; τ̂_1; …; τ̂_T] in one pass over the
// rows, with the bits of gonum's Dsdot pair by pair. Dsdot on amd64 (its
// assembly DdotUnitary) sums x_j·y_j in float64 as follows, the products
// being exact: the first h entries, h = 0…3 until y is 16-byte aligned,
// one by one into s₀; then, in blocks of eight, entry h + 8q + r into the
// partial sum of class r mod 4 (s₀ … s₃, index order within each class);
// then (s₀ + s₂, s₁ + s₃), to which the 0…7 remaining entries are added in
// pairs (and a last one into the first); then the two halves. dsdot spells
// that out in Go; gramsVec (vector loops in the SIMD build) forms every
// pair's four class sums from one load of each row.

// dsdot is Σ x_j·y_j in float64 in the order of gonum's Dsdot on amd64
// (see above): the scalar reference of the fused Gram. len(y) ≥ len(x).
func dsdot(x, y []float32) float64 {
	n := len(x)
	if n == 0 {
		return 0
	}
	y = y[:n]
	h := min(headLen(y), n)
	var c [4]float64
	for j := range h {
		c[0] += float64(x[j]) * float64(y[j])
	}
	j := h
	for ; j+8 <= n; j += 8 {
		for r := range 4 {
			c[r] += float64(x[j+r]) * float64(y[j+r])
		}
		for r := range 4 {
			c[r] += float64(x[j+4+r]) * float64(y[j+4+r])
		}
	}
	return tailSum(c, x[j:], y[j:])
}

// headLen is how many float32 entries of y precede its first 16-byte
// aligned one (Dsdot's scalar head).
func headLen(y []float32) int {
	if len(y) == 0 {
		return 0
	}
	off := int(uintptr(unsafe.Pointer(&y[0])) & 15)
	return (16 - off) & 15 / 4
}

// tailSum finishes a Dsdot from its four class sums and the tail entries
// after the last block of eight.
func tailSum(c [4]float64, x, y []float32) float64 {
	s0, s1 := c[0]+c[2], c[1]+c[3]
	j := 0
	for ; j+2 <= len(x); j += 2 {
		s0 += float64(x[j]) * float64(y[j])
		s1 += float64(x[j+1]) * float64(y[j+1])
	}
	if j < len(x) {
		s0 += float64(x[j]) * float64(y[j])
	}
	return s0 + s1
}

// grams sets g[i·R + j], for i ≤ j < R = len(rows), to Dsdot(rows[i],
// rows[j]) over len(rows[0]) entries, bit for bit. It reports false, with
// g unspecified, when it cannot do it in one pass: the build has no vector
// loops, R > maxGramRows, the rows are shorter than a head and a block of
// eight, or rows[1:] (every y but that of the pair (0, 0)) do not all have
// the same alignment. A rows[0] of another alignment gets its (0, 0) entry
// from dsdot.
func grams(g []float64, rows [][]float32) bool {
	R := len(rows)
	if R < 2 || R > maxGramRows || len(g) < R*R {
		return false
	}
	n := len(rows[0])
	h := headLen(rows[1][:n])
	for _, r := range rows[2:] {
		if headLen(r[:n]) != h {
			return false
		}
	}
	if n < h+8 {
		return false
	}
	same := headLen(rows[0]) == h
	if !gramsVec(g, rows, n, h, same) {
		return false
	}
	if !same {
		g[0] = dsdot(rows[0], rows[0])
	}
	return true
}

// maxGramRows bounds R in grams; maxGramPairs is its number of pairs.
const (
	maxGramRows  = 8
	maxGramPairs = maxGramRows * (maxGramRows + 1) / 2
)
