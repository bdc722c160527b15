//go:build goexperiment.simd && amd64

package avxstate

import (
	"math"
	"runtime"
	"simd/archsimd"
	"slices"
	"time"
)

// expCalls is the length of one timed run of math.Exp calls: about 2 µs
// when the registers are clean, long enough for the timer, short enough
// that an asynchronous preemption (which leaves the upper halves dirty in
// a GOEXPERIMENT=simd build) rarely lands in one.
const expCalls = 256

// scratch receives Dirty's store.
var scratch [8]float32

// Available reports whether the CPU has AVX2 (the vector loops' level, and
// what Dirty needs).
func Available() bool { return archsimd.X86.AVX2() }

// Dirty leaves the upper halves of the vector registers dirty: a 256-bit
// vector store with no VZEROUPPER after it, which is how a vector loop
// without archsimd.ClearAVXUpperBits returns.
//
//go:noinline
func Dirty() {
	archsimd.BroadcastFloat32x8(1).Store(&scratch)
}

// expRun times expCalls calls of math.Exp.
func expRun() time.Duration {
	s, x := 0.0, 0.5
	t := time.Now()
	for range expCalls {
		s += math.Exp(x)
		x += 1e-6
	}
	d := time.Since(t)
	runtime.KeepAlive(s)
	return d
}

// ExpSlowdown is how many times slower math.Exp runs right after a call of
// after than right after a VZEROUPPER: the median over reps pairs (each a
// clean run, then after and a timed run) of the ratio of their times.
// About 1 when after returns with the upper halves clean.
func ExpSlowdown(after func(), reps int) float64 {
	r := make([]float64, reps)
	for i := range r {
		archsimd.ClearAVXUpperBits()
		clean := expRun()
		after()
		r[i] = float64(expRun()) / float64(max(clean, 1))
	}
	archsimd.ClearAVXUpperBits()
	slices.Sort(r)
	return r[reps/2]
}

// Penalty is ExpSlowdown(Dirty, reps): how much the CPU punishes dirty
// upper halves (about 1 on CPUs without the AVX–SSE penalty).
func Penalty(reps int) float64 { return ExpSlowdown(Dirty, reps) }
