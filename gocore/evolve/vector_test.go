package evolve

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// vectorStrategies are the strategies with a vector loop of their own.
var vectorStrategies = []search.Strategy{StrategyEvolver, search.Rand1Bin, search.Best1Bin, search.CurrentToBest1Bin}

// specialPop is randomPop with signed zeros, infinities, a NaN, subnormals
// and huge values (whose differences overflow) sprinkled in, at most one
// non-finite value per element index.
func specialPop(np, n int, seed uint64) [][]float32 {
	pop := randomPop(np, n, seed)
	specials := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), 1e-45, -3e-39, 3e38, -3e38}
	for j := 0; j < n; j += 3 {
		pop[j%np][j] = specials[(j/3)%len(specials)]
	}
	return pop
}

// sameF32 reports the first index where got and want differ in their bits.
func sameF32(got, want []float32) (int, bool) {
	for j := range want {
		if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
			return j, false
		}
	}
	return -1, true
}

// TestDenseVectorMatchesScalar runs the dense element step and the donor
// loop on one piece through dense/mutate (vector loops when accelerated) and
// through denseGo/mutateGo, and wants the same bits, the same count and the
// same generator state, over lengths around the vector width, crossover
// rates, forced-index positions and F values.
func TestDenseVectorMatchesScalar(t *testing.T) {
	lengths := []int{1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 100, subBlock - 1, subBlock}
	crs := []float64{SparseCR, 0.3, 0.5, 0.9, 1 - 1.0/65536, 1}
	fs := []float32{0, 0.5, 0.375, 0.8, 1, -0.7, 1.9}
	pop := specialPop(5, subBlock, 21)
	for _, st := range vectorStrategies {
		for _, n := range lengths {
			for ci, cr := range crs {
				for _, jr := range []int{-1, 0, 5, 7, 8, n / 2, n - 1, n, n + 9} {
					f := fs[(ci+n+jr+len(st))%len(fs)]
					k := &kernel{c: &Config{Strategy: st}, f: f}
					xi := pop[0][:n]
					refs := [3][]float32{pop[1][:n], pop[2][:n], pop[3][:n]}
					if st == StrategyEvolver {
						refs[1], refs[2] = nil, nil
					}
					name := fmt.Sprintf("%s n=%d CR=%v jr=%d F=%v", st, n, cr, jr, f)
					seed := uint64(n*1000 + ci)
					r1, r2 := search.NewRNG(seed), search.NewRNG(seed)
					got, want := make([]float32, n), make([]float32, n)
					tg := k.dense(got, xi, refs, r1, DenseThreshold(cr), jr)
					tw := k.denseGo(want, xi, refs, r2, DenseThreshold(cr), jr)
					if j, ok := sameF32(got, want); !ok {
						t.Fatalf("%s: dense element %d is %v (%#x), scalar %v (%#x), accelerated=%v",
							name, j, got[j], math.Float32bits(got[j]), want[j], math.Float32bits(want[j]), accelerated)
					}
					if tg != tw || r1.State() != r2.State() {
						t.Fatalf("%s: dense took %d, scalar %d; generator states equal: %v", name, tg, tw, r1.State() == r2.State())
					}
					if jr < 0 || jr > 8 { // the donor loop does not depend on CR or jr
						continue
					}
					k.mutate(got, xi, refs)
					k.mutateGo(want, xi, refs)
					if j, ok := sameF32(got, want); !ok {
						t.Fatalf("%s: mutate element %d is %v, scalar %v", name, j, got[j], want[j])
					}
				}
			}
		}
	}
}

// TestOffspringVectorMatchesScalar runs whole trials with the vector loops
// on and off, for float32, bfloat16 and float16 storage, every strategy and
// granularity, and lengths around the vector width and chunk boundaries.
func TestOffspringVectorMatchesScalar(t *testing.T) {
	lengths := []int{1, 7, 8, 9, 33, subBlock + 3, parallel.Chunk - 1, parallel.Chunk + 13}
	for _, d := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16} {
		for _, n := range lengths {
			pop := specialPop(4, n, uint64(n))
			vs := make([]tensor.Vec, len(pop))
			for i, x := range pop {
				if d == tensor.F32 {
					vs[i] = tensor.FromF32(x)
				} else {
					vs[i] = tensor.Alloc(n, d)
					vs[i].Store(x, 0)
				}
			}
			for _, st := range vectorStrategies {
				for _, c := range []struct {
					g  Granularity
					cr float64
					f  float64
				}{{Element, 0.5, 0.5}, {Element, 0.9, 0.37}, {Element, 1, 1.3}, {Element, 0.01, 0.6}, {Block, 0.5, 0.8}} {
					cfg := constCfg(st, c.f, c.cr)
					cfg.Granularity, cfg.BlockSize, cfg.ForceIndex = c.g, 11, true
					tr, err := cfg.Plan(3, 1, []float64{1, 4, 2, 3}, n)
					if err != nil {
						t.Fatal(err)
					}
					run := func(vector bool) (tensor.Vec, int64) {
						defer setAccelerated(vector)()
						out := tensor.Alloc(n, d)
						taken, err := Offspring(out, vs, &cfg, &tr)
						if err != nil {
							t.Fatal(err)
						}
						return out, taken
					}
					got, tg := run(true)
					want, tw := run(false)
					name := fmt.Sprintf("%v n=%d %s %s CR=%v", d, n, st, c.g, c.cr)
					if d == tensor.F32 {
						if j, ok := sameF32(got.F32, want.F32); !ok {
							t.Fatalf("%s: element %d is %v, scalar %v", name, j, got.F32[j], want.F32[j])
						}
					} else if !slices.Equal(got.U16, want.U16) {
						t.Fatalf("%s: 16-bit offspring differs from the scalar path", name)
					}
					if tg != tw {
						t.Fatalf("%s: took %d, scalar %d", name, tg, tw)
					}
				}
			}
		}
	}
}

// TestDrawWords pins drawWords to the generator's own Uint64 stream.
func TestDrawWords(t *testing.T) {
	for _, n := range []int{0, 1, 2, 5, subBlock / 4} {
		r1, r2 := search.NewRNG(uint64(n)+9), search.NewRNG(uint64(n)+9)
		r1.Uint64()
		r2.Uint64()
		got := make([]uint64, n)
		drawWords(got, r1)
		for i, w := range got {
			if want := r2.Uint64(); w != want {
				t.Fatalf("n=%d: word %d is %#x, want %#x", n, i, w, want)
			}
		}
		if r1.State() != r2.State() {
			t.Fatalf("n=%d: generator states differ after the draw", n)
		}
	}
}
