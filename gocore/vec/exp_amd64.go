//go:build goexperiment.simd && amd64

package vec

import "simd/archsimd"

// ExpConsts holds the broadcast constants of Exp32x8 and Tanh32x8: a
// caller's vector loop makes them once (NewExpConsts), outside the loop.
// (Broadcasting inside the loop would also compile, but a constant
// broadcast can emit a legacy SSE instruction: see the note on accelerated
// in simd_amd64.go.)
type ExpConsts struct {
	max, min, log2e, magic, ln2Hi, ln2Lo archsimd.Float32x8
	c2, c3, c4, c5, c6, c7, one, two     archsimd.Float32x8
	small, big, q0, q1, q2, q3, q4       archsimd.Float32x8
	bias, abs, sign                      archsimd.Uint32x8
}

// NewExpConsts returns the constants of Exp32x8 and Tanh32x8.
func NewExpConsts() *ExpConsts {
	b := archsimd.BroadcastFloat32x8
	k := &ExpConsts{
		max: b(expMax), min: b(expMin), log2e: b(expLog2e), magic: b(expMagic),
		ln2Hi: b(expLn2Hi), ln2Lo: b(expLn2Lo),
		c2: b(expC2), c3: b(expC3), c4: b(expC4), c5: b(expC5), c6: b(expC6), c7: b(expC7),
		one: b(1), two: b(2),
		small: b(tanhSmall), big: b(tanhBig),
		q0: b(tanhQ0), q1: b(tanhQ1), q2: b(tanhQ2), q3: b(tanhQ3), q4: b(tanhQ4),
		bias: archsimd.BroadcastUint32x8(expBias1),
		abs:  archsimd.BroadcastUint32x8(1<<31 - 1),
		sign: archsimd.BroadcastUint32x8(1 << 31),
	}
	archsimd.ClearAVXUpperBits() // the vectors are stored: clean for the caller
	return k
}

// Exp32x8 is Exp32 on 8 lanes, bit for bit. It leaves the upper halves of
// the vector registers dirty: the caller's loop ends with
// archsimd.ClearAVXUpperBits before any scalar float code.
func Exp32x8(x archsimd.Float32x8, k *ExpConsts) archsimd.Float32x8 {
	// Compare and blend, not VMINPS/VMAXPS: which operand those return for
	// NaN depends on the order the compiler gives them (it may swap them).
	x = x.Merge(k.max, x.Less(k.max)) // NaN → max, as !(x < expMax) in Exp32
	x = x.Merge(k.min, x.Greater(k.min))
	t := x.Mul(k.log2e).Add(k.magic)
	n := t.Sub(k.magic)
	r := x.Sub(n.Mul(k.ln2Hi))
	r = r.Sub(n.Mul(k.ln2Lo))
	r2 := r.Mul(r)
	u23 := k.c3.Mul(r).Add(k.c2)
	u45 := k.c5.Mul(r).Add(k.c4)
	u67 := k.c7.Mul(r).Add(k.c6)
	w := u45.Add(r2.Mul(u67))
	w = u23.Add(r2.Mul(w))
	p := k.one.Add(r.Add(r2.Mul(w)))
	s := t.AsUint32x8().Add(k.bias).ShiftAllLeft(23).AsFloat32x8()
	return p.Mul(s).Mul(k.two)
}

// Tanh32x8 is Tanh32 on 8 lanes, bit for bit (both branches are computed
// and blended, the exp only when a lane needs it). Upper halves left dirty, as Exp32x8.
func Tanh32x8(y archsimd.Float32x8, k *ExpConsts) archsimd.Float32x8 {
	a := y.AsUint32x8().And(k.abs).AsFloat32x8()
	z := y.Mul(y)
	q := k.q4.Mul(z).Add(k.q3)
	q = q.Mul(z).Add(k.q2)
	q = q.Mul(z).Add(k.q1)
	q = q.Mul(z).Add(k.q0)
	poly := y.Add(y.Mul(z.Mul(q)))
	small := a.Less(k.small)
	if small.ToBits() == 0xff { // every lane on the polynomial: no exp
		return poly.AsUint32x8().Or(y.AsUint32x8().And(k.sign)).AsFloat32x8()
	}
	e := Exp32x8(a.Merge(k.big, a.Less(k.big)).Mul(k.two), k)
	r := k.one.Sub(k.two.Div(e.Add(k.one)))
	v := poly.Merge(r, small)
	return v.AsUint32x8().Or(y.AsUint32x8().And(k.sign)).AsFloat32x8()
}

// ExpConsts16 holds the broadcast constants of Exp32x16 and Tanh32x16
// (AVX-512), made once by NewExpConsts16 outside the caller's loop.
type ExpConsts16 struct {
	max, min, log2e, magic, ln2Hi, ln2Lo archsimd.Float32x16
	c2, c3, c4, c5, c6, c7, one, two     archsimd.Float32x16
	small, big, q0, q1, q2, q3, q4       archsimd.Float32x16
	bias, abs, sign                      archsimd.Uint32x16
}

// NewExpConsts16 returns the constants of Exp32x16 and Tanh32x16. Only
// for a CPU with AVX-512 (archsimd.X86.AVX512()).
func NewExpConsts16() *ExpConsts16 {
	b := archsimd.BroadcastFloat32x16
	k := &ExpConsts16{
		max: b(expMax), min: b(expMin), log2e: b(expLog2e), magic: b(expMagic),
		ln2Hi: b(expLn2Hi), ln2Lo: b(expLn2Lo),
		c2: b(expC2), c3: b(expC3), c4: b(expC4), c5: b(expC5), c6: b(expC6), c7: b(expC7),
		one: b(1), two: b(2),
		small: b(tanhSmall), big: b(tanhBig),
		q0: b(tanhQ0), q1: b(tanhQ1), q2: b(tanhQ2), q3: b(tanhQ3), q4: b(tanhQ4),
		bias: archsimd.BroadcastUint32x16(expBias1),
		abs:  archsimd.BroadcastUint32x16(1<<31 - 1),
		sign: archsimd.BroadcastUint32x16(1 << 31),
	}
	archsimd.ClearAVXUpperBits()
	return k
}

// Exp32x16 is Exp32 on 16 lanes (AVX-512), bit for bit: Exp32x8's
// operations in the same order. Upper halves left dirty, as Exp32x8.
func Exp32x16(x archsimd.Float32x16, k *ExpConsts16) archsimd.Float32x16 {
	x = x.Merge(k.max, x.Less(k.max)) // NaN → max, as !(x < expMax) in Exp32
	x = x.Merge(k.min, x.Greater(k.min))
	return Exp32x16InRange(x, k)
}

// Exp32x16InRange is Exp32x16 for lanes known to lie in (−86, 89), where
// Exp32's clamps leave them as they are: the same bits without the two
// compares and blends.
func Exp32x16InRange(x archsimd.Float32x16, k *ExpConsts16) archsimd.Float32x16 {
	t := x.Mul(k.log2e).Add(k.magic)
	n := t.Sub(k.magic)
	r := x.Sub(n.Mul(k.ln2Hi))
	r = r.Sub(n.Mul(k.ln2Lo))
	r2 := r.Mul(r)
	u23 := k.c3.Mul(r).Add(k.c2)
	u45 := k.c5.Mul(r).Add(k.c4)
	u67 := k.c7.Mul(r).Add(k.c6)
	w := u45.Add(r2.Mul(u67))
	w = u23.Add(r2.Mul(w))
	p := k.one.Add(r.Add(r2.Mul(w)))
	s := t.AsUint32x16().Add(k.bias).ShiftAllLeft(23).AsFloat32x16()
	return p.Mul(s).Mul(k.two)
}

// Tanh32x16 is Tanh32 on 16 lanes (AVX-512), bit for bit, as Tanh32x8:
// both branches blended, the exp only when a lane needs it.
func Tanh32x16(y archsimd.Float32x16, k *ExpConsts16) archsimd.Float32x16 {
	a := y.AsUint32x16().And(k.abs).AsFloat32x16()
	z := y.Mul(y)
	q := k.q4.Mul(z).Add(k.q3)
	q = q.Mul(z).Add(k.q2)
	q = q.Mul(z).Add(k.q1)
	q = q.Mul(z).Add(k.q0)
	poly := y.Add(y.Mul(z.Mul(q)))
	small := a.Less(k.small)
	if small.ToBits() == 0xffff { // every lane on the polynomial: no exp
		return poly.AsUint32x16().Or(y.AsUint32x16().And(k.sign)).AsFloat32x16()
	}
	e := Exp32x16(a.Merge(k.big, a.Less(k.big)).Mul(k.two), k)
	r := k.one.Sub(k.two.Div(e.Add(k.one)))
	v := poly.Merge(r, small)
	return v.AsUint32x16().Or(y.AsUint32x16().And(k.sign)).AsFloat32x16()
}

// Tanh32x16Small is Tanh32x16 when every lane of y is on the polynomial
// (|y| < 0.625): the same bits, and true; otherwise (y, false), and the
// caller takes Tanh32x16. Small enough to be inlined into a caller's loop,
// unlike Tanh32x16.
func Tanh32x16Small(y archsimd.Float32x16, k *ExpConsts16) (archsimd.Float32x16, bool) {
	a := y.AsUint32x16().And(k.abs).AsFloat32x16()
	if a.Less(k.small).ToBits() != 0xffff {
		return y, false
	}
	z := y.Mul(y)
	q := k.q4.Mul(z).Add(k.q3)
	q = q.Mul(z).Add(k.q2)
	q = q.Mul(z).Add(k.q1)
	q = q.Mul(z).Add(k.q0)
	poly := y.Add(y.Mul(z.Mul(q)))
	return poly.AsUint32x16().Or(y.AsUint32x16().And(k.sign)).AsFloat32x16(), true
}
