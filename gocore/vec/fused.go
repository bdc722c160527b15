package vec

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

// The fused loops of the TIES family (issue 15): the counting pass of the
// top-k selection over |θ_m − θ₀| without a magnitude buffer, and the merge
// of one chunk from the inputs to the result in one pass (task vectors,
// their magnitude band, rescale, sign election and disjoint mean or
// weighted sum, TALL-mask consensus, θ₀ + λ·…) without task-vector
// buffers. Each gives bit for bit what the separate loops (Sub, KeepTop,
// DisjointMean, WeightedSum, …) give in sequence.

// Cut is a keep rule over magnitudes, the one KeepTop applies: an entry is
// inside the cut when the bits of its |x| exceed Bits, or equal Bits and it
// is among the first Allow such entries (Allow < 0: all of them). Bits must
// be at most 0x7fffffff.
type Cut struct {
	Bits  uint32
	Allow int
}

// Everything is the cut every entry is inside; Nothing the cut none is
// (0x7fffffff is a NaN's pattern, which a finite difference never has).
var (
	Everything = Cut{Bits: 0, Allow: -1}
	Nothing    = Cut{Bits: 0x7fffffff, Allow: 0}
)

// inside reports whether magnitude bits a are inside the cut, consuming
// one unit of the allowance for an entry equal to Bits.
func (c *Cut) inside(a uint32) bool {
	if a > c.Bits {
		return true
	}
	if a == c.Bits && c.Allow != 0 {
		if c.Allow > 0 {
			c.Allow--
		}
		return true
	}
	return false
}

// Band keeps the entries inside In and not inside Out. Both cuts see every
// entry in index order and consume their allowances independently (as
// Model Breadcrumbs' inner and outer top-k cuts do); a top-k mask is
// Band{In: cut, Out: Nothing}.
type Band struct{ In, Out Cut }

// TaskMerge describes MergeTasks' computation for up to 8 models.
type TaskMerge struct {
	// W are the models' weights.
	W []float32
	// Bands, when not nil, masks each model's task vector (the cuts'
	// allowances are consumed in place, so that a chunk can be continued).
	Bands []Band
	// Drop, when not nil, applies DARE's random drop to each model's task
	// vector after Bands (DareDrop's rule): entry j of model m is kept when
	// rng.Bits(Drop[m].Key, Start+j)>>40 < Drop[m].Thr, else set to +0.
	Drop []Drop
	// Start is the stream index of entry 0 for Drop.
	Start uint64
	// Scale, when not nil, multiplies each model's kept entries.
	Scale []float32
	// Disjoint selects TIES' disjoint mean of the weighted task vectors
	// (DisjointMean; Norm divides by the agreeing weights); otherwise the
	// weighted sum (WeightedSum), divided by Div when DivOn.
	Disjoint, Norm bool
	DivOn          bool
	Div            float32
	// Lam multiplies the combination before it is added to the base.
	Lam float32
	// TallLam, when not nil, applies consensus merging's TALL masks: model
	// m votes for entry j when |τ_m| ≥ TallLam[m]·|c − τ_m| (τ_m the raw
	// task vector, c the combination); entries with at least K votes get
	// base + Lam·c, the others the base.
	TallLam []float32
	K       int
	// Check adds the inputs to the finiteness test of the result.
	Check bool

	// base16, x16: the inputs in bfloat16 (MergeTasksBF16), widened in
	// registers; nil for float32 inputs.
	base16 []uint16
	x16    [][]uint16
}

// Drop is one model's random drop in TaskMerge: stream key and threshold
// (DareThreshold; 1<<24 keeps everything).
type Drop struct{ Key, Thr uint64 }

// MergeTasks sets out[j] to base[j] + Lam·c[j], where c combines the task
// vectors τ_m = x[m][j] − base[j] masked by Bands and scaled by Scale, as p
// describes (see TaskMerge); the sums run in model order in float32,
// multiplications and additions rounded separately. It reports whether
// every result (and with p.Check every input) is finite. base and every
// x[m] must be at least len(out) long; 1 ≤ len(x) ≤ 8 with len(p.W) (and
// len(p.Bands), len(p.Scale), len(p.TallLam) when set) equal to len(x).
func MergeTasks(out, base []float32, x [][]float32, p *TaskMerge) bool {
	p.check("vec.MergeTasks", len(x))
	checkInputs(len(out), base, x, p.W)
	return mergeTasks(out, base[:len(out)], x, p)
}

// check panics, naming fn, unless p fits T models: 1 ≤ T ≤ 8, one weight
// and (when set) one band, drop, scale and TALL λ per model, cut bits at
// most 0x7fffffff.
func (p *TaskMerge) check(fn string, T int) {
	if T < 1 || T > 8 || len(p.W) != T || (p.Bands != nil && len(p.Bands) != T) ||
		(p.Scale != nil && len(p.Scale) != T) || (p.TallLam != nil && len(p.TallLam) != T) ||
		(p.Drop != nil && len(p.Drop) != T) {
		panic(fn + ": need 1 to 8 models and one weight, band, drop, scale and TALL λ per model")
	}
	for _, b := range p.Bands {
		if b.In.Bits > 0x7fffffff || b.Out.Bits > 0x7fffffff {
			panic(fn + ": cut bits above 0x7fffffff")
		}
	}
}

// MergeTasksBF16 is MergeTasks over bfloat16 inputs, read where they are
// stored and widened to float32 in registers (exactly): the same result as
// MergeTasks over the widened inputs, without widening them into buffers
// first.
func MergeTasksBF16(out []float32, base []uint16, x [][]uint16, p *TaskMerge) bool {
	p.check("vec.MergeTasksBF16", len(x))
	if len(base) < len(out) {
		panic("vec: base shorter than output")
	}
	for _, xm := range x {
		if len(xm) < len(out) {
			panic("vec: input shorter than output")
		}
	}
	q := *p // the bands' allowances stay shared: they are consumed in place
	q.base16, q.x16 = base[:len(out)], x
	return mergeTasks(out, nil, nil, &q)
}

// mergeTasksGoBF16 is mergeTasksGo over p's bfloat16 inputs: they are
// widened (exactly) piece by piece into buffers on the stack and merged in
// index order, so that the cuts' allowances and Drop's stream index run on
// as over the whole slice.
func mergeTasksGoBF16(out []float32, p *TaskMerge) bool {
	const piece = 256
	T := len(p.W)
	var bb [piece]float32
	var xb [8][piece]float32
	var xs [8][]float32
	q := *p
	q.base16, q.x16 = nil, nil
	fin := true
	for j := 0; j < len(out); j += piece {
		k := min(piece, len(out)-j)
		widenBF16Go(bb[:k], p.base16[j:j+k])
		for m := range T {
			widenBF16Go(xb[m][:k], p.x16[m][j:j+k])
			xs[m] = xb[m][:k]
		}
		q.Start = p.Start + uint64(j)
		fin = mergeTasksGo(out[j:j+k], bb[:k], xs[:T], &q) && fin
	}
	return fin
}

// mergeTasksGo is MergeTasks' scalar twin, entry by entry.
func mergeTasksGo(out, base []float32, x [][]float32, p *TaskMerge) bool {
	T := len(x)
	var tb, rb [8]float32
	t, raw := tb[:T], rb[:T]
	w := p.W
	var fin float32
	for j, b := range base[:len(out)] {
		for m := range T {
			xv := x[m][j]
			if p.Check {
				fin += xv * 0
			}
			v := xv - b
			raw[m] = v
			if p.Bands != nil {
				a := math.Float32bits(v) & 0x7fffffff
				in := p.Bands[m].In.inside(a)
				o := p.Bands[m].Out.inside(a)
				if !in || o {
					v = 0
				}
			}
			if p.Drop != nil && rng.Bits(p.Drop[m].Key, p.Start+uint64(j))>>40 >= p.Drop[m].Thr {
				v = 0
			}
			if p.Scale != nil {
				v *= p.Scale[m]
			}
			t[m] = v
		}
		if p.Check {
			fin += b * 0
		}
		sum := float32(w[0] * t[0])
		for m := 1; m < T; m++ {
			sum += float32(w[m] * t[m])
		}
		var c float32
		if p.Disjoint {
			g := ElectedSign(sum)
			var num, den float32
			for m := range T {
				v := float32(w[m] * t[m])
				mask := AgreeMask(v, g)
				num += math.Float32frombits(math.Float32bits(v) & mask)
				den += math.Float32frombits(math.Float32bits(w[m]) & mask)
			}
			c = num
			if p.Norm && den != 0 {
				c = num / den
			}
		} else {
			c = sum
			if p.DivOn {
				c /= p.Div
			}
		}
		r := b + float32(p.Lam*c)
		if p.TallLam != nil {
			active := 0
			for m, v := range raw {
				if abs32(v) >= float32(p.TallLam[m]*abs32(c-v)) {
					active++
				}
			}
			if active < p.K {
				r = b
			}
		}
		out[j] = r
		fin += r * 0
	}
	return fin == fin
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// CountDiffWindows is CountWindow over the magnitudes |x[j] − b[j]| for
// several windows at once, without storing them: for each window i it adds
// to above[i] the entries whose bits exceed hi[i] and appends to cands[i]
// the bits of those within [lo[i], hi[i]], in index order. It reports
// whether every x[j] is finite (the counts mean nothing when it is not).
// len(lo), len(hi), len(above) and len(cands) must be equal and at most 8;
// b must be at least len(x) long.
func CountDiffWindows(x, b []float32, lo, hi []uint32, above []int64, cands [][]uint32) bool {
	W := len(lo)
	if W > 8 || len(hi) != W || len(above) != W || len(cands) != W {
		panic("vec.CountDiffWindows: need at most 8 windows and one bound, count and list per window")
	}
	if len(b) < len(x) {
		panic("vec.CountDiffWindows: b shorter than x")
	}
	return countDiffWindows(x, b[:len(x)], lo, hi, above, cands)
}

// countDiffWindowsGo is CountDiffWindows' scalar twin.
func countDiffWindowsGo(x, b []float32, lo, hi []uint32, above []int64, cands [][]uint32) bool {
	var fin float32
	b = b[:len(x)]
	for j, v := range x {
		fin += v * 0
		a := math.Float32bits(v-b[j]) & 0x7fffffff
		for i, h := range hi {
			above[i] += int64((uint64(h) - uint64(a)) >> 63)
			if a >= lo[i] && a <= h {
				cands[i] = append(cands[i], a)
			}
		}
	}
	return fin == fin
}

// MeanLerp sets out[j] = t·(Σₘ x[m][j])/len(x) + omt·base[j], the sum in
// model order starting from +0 (Model Stock's interpolation); it reports
// whether every result is finite. base and every x[m] must be at least
// len(out) long, len(x) ≥ 1.
func MeanLerp(out, base []float32, x [][]float32, t, omt float32) bool {
	if len(x) == 0 {
		panic("vec.MeanLerp: no inputs")
	}
	if len(base) < len(out) {
		panic("vec.MeanLerp: base shorter than output")
	}
	for _, xm := range x {
		if len(xm) < len(out) {
			panic("vec.MeanLerp: input shorter than output")
		}
	}
	// The count is converted here: a conversion among the vector
	// instructions would be legacy SSE.
	return meanLerp(out, base[:len(out)], x, float32(len(x)), t, omt)
}

// meanLerpGo is MeanLerp's scalar twin.
func meanLerpGo(out, base []float32, x [][]float32, t, omt float32) bool {
	clear(out)
	for _, xm := range x {
		for j, v := range xm[:len(out)] {
			out[j] += v
		}
	}
	nT := float32(len(x))
	var fin float32
	for j, b := range base[:len(out)] {
		avg := out[j] / nT
		r := float32(t*avg) + float32(omt*b)
		out[j] = r
		fin += r * 0
	}
	return fin == fin
}

// TaskGrams sets g[a·T − a(a−1)/2 + (b−a)], for a ≤ b < T = len(x), to the
// inner product of the task vectors τ_a·τ_b, τ_m = x[m] − base (float32
// differences, as Sub), over len(base) entries, summed in float64 in the
// order of gonum's Dsdot on amd64 (its assembly kernel over 16-byte-aligned
// data, as every Go allocation of 32 bytes or more is: four partial sums by
// index mod 4 in index order, then (s₀ + s₂) + (s₁ + s₃); products of two
// float32 are exact in float64). It reports false, with g unspecified,
// when it cannot: a build without the vector loops, a length that is not a
// multiple of 8 (Dsdot's tail loops), T > 8, or an input that is not
// finite; the caller then takes the separate loops (Sub, Dsdot), which
// also name the bad input. len(g) must be T(T+1)/2 and every x[m] at
// least len(base) long.
func TaskGrams(g []float64, base []float32, x [][]float32) bool {
	T := len(x)
	if len(g) != T*(T+1)/2 {
		panic("vec.TaskGrams: need T(T+1)/2 sums")
	}
	for _, xm := range x {
		if len(xm) < len(base) {
			panic("vec.TaskGrams: input shorter than the base")
		}
	}
	if T == 0 || T > 8 || len(base)%8 != 0 {
		return false
	}
	return taskGrams(g, base, x)
}
