package merge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// TestNeuroMergeMatchesGeneralPath compares NeuroMerging's merge pass
// (neuro_merge.go) with mergeChunk's general path (generalOnly), bit for
// bit and error for error, over dtypes, transposed, conv, 1-D and odd
// shapes, 1, 3 and 4 models, mask rates, scopes, weights, λ₁ and a fixed
// λ₂, inputs with ties at the cuts (coarse values) and an overflowing λ.
func TestNeuroMergeMatchesGeneralPath(t *testing.T) {
	type variant struct {
		name string
		T    int
		set  func(p *Params)
	}
	variants := []variant{
		{"default", 3, func(*Params) {}},
		{"mask0.9 tensor scope", 3, func(p *Params) { p.MaskRate, p.Scope = 0.9, ScopeTensor }},
		{"weights lam1", 4, func(p *Params) { p.Weights, p.Lam1 = []float32{1, -0.5, 0, 2}, 0.3 }},
		{"lam2 fixed", 3, func(p *Params) { p.Lam2 = 1.5 }},
		{"one model", 1, func(*Params) {}},
		{"overflow", 3, func(p *Params) { p.Lambda = 3e38 }},
	}
	shapes := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}, {9, 4, 3, 3}, {37, 129}, {64, 256}}
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, v := range variants {
			for _, data := range []string{"normal", "coarse"} {
				for _, transposed := range []bool{false, true} {
					p := testParams("neuro")
					p.Lambda = 0.7
					p.Pool = parallel.Pool{Threads: 2}
					v.set(&p)
					where := fmt.Sprintf("%v %s %s transposed=%v", dt, v.name, data, transposed)
					checkGeneralPath(t, where, "neuro", p, dt, shapes, v.T, data == "coarse", transposed, v.name == "overflow")
				}
			}
		}
	}
}

// TestSubKeepTop compares subKeepTop with its twin and with vec.Sub
// followed by vec.KeepTop, bit for bit and allowance for allowance, with
// many ties at the cut, ±0 and every kind of allowance.
func TestSubKeepTop(t *testing.T) {
	// The 16-lane loop where the CPU has AVX-512, and the 8-lane one.
	defer func(v bool) { countSums512 = v }(countSums512)
	for _, wide := range []bool{countSums512, false} {
		countSums512 = wide
		testSubKeepTop(t)
	}
}

func testSubKeepTop(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 64, 100, 1000} {
		for trial := range 20 {
			x, b := make([]float32, n), make([]float32, n)
			for j := range x {
				x[j] = float32(r.IntN(9)-4) * 0.25
				b[j] = float32(r.IntN(5)-2) * 0.25
				if r.IntN(5) == 0 {
					b[j] = float32(math.Copysign(0, -1))
				}
			}
			bits := math.Float32bits(float32(trial%4) * 0.25)
			if trial%7 == 6 {
				bits = 0x7fffffff // beyond every magnitude
			}
			allow := []int{-1, 0, 1, 3, 1000}[trial%5]
			want := make([]float32, n)
			vec.Sub(want, x, b)
			wantAllow := vec.KeepTop(want, bits, allow)
			for _, f := range []func(tau, x, b []float32, bits uint32, allow int) int{subKeepTop, subKeepTopGo} {
				got := make([]float32, n)
				a := f(got, x, b, bits, allow)
				if a != wantAllow {
					t.Fatalf("n=%d trial %d: allowance %d, want %d", n, trial, a, wantAllow)
				}
				for j := range got {
					if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
						t.Fatalf("n=%d trial %d: entry %d is %v, want %v", n, trial, j, got[j], want[j])
					}
				}
			}
		}
	}
}
