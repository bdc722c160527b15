package vec

import "math"

// Exp32 and Tanh32 are float32 exp and tanh made of float32 multiplies,
// adds, divides, compares and integer bit operations only, each rounded on
// its own (never a fused multiply-add: every product is converted to
// float32 explicitly, which the Go spec forbids to fuse), so that their
// vector twins Exp32x8 and Tanh32x8 (exp_amd64.go, GOEXPERIMENT=simd) give
// the same bits lane by lane. Within 2 ulps of the exact result over their
// domains (see the tests), against the 0.5 ulp of float32(math.Exp(x)).

// Constants of Exp32: n = round(x/ln 2) by the 1.5·2²³ trick (adding it
// rounds to an integer held in the low mantissa bits), r = x − n·ln 2 in
// two parts (expLn2Hi has 9 significant bits, so n·expLn2Hi is exact for
// |n| ≤ 2¹⁵), exp(r) by its Taylor polynomial of degree 7 (see Exp32 for
// the order of evaluation) (|r| ≤ 0.35:
// truncation below 6e-9 relative), times 2ⁿ⁻¹·2 (two steps, so that n = 128
// still has an exponent field and overflows to +Inf in the last multiply).
const (
	expMagic  = 12582912 // 1.5·2²³
	expLog2e  = 1.44269504088896340736
	expLn2Hi  = 0.693359375
	expLn2Lo  = -2.12194440054690582e-4
	expMax    = 89  // exp(89) > MaxFloat32: +Inf
	expMin    = -86 // 2ⁿ⁻¹ stays a normal number
	expC2     = 1.0 / 2
	expC3     = 1.0 / 6
	expC4     = 1.0 / 24
	expC5     = 1.0 / 120
	expC6     = 1.0 / 720
	expC7     = 1.0 / 5040
	expBias1  = 126 // exponent bias − 1: the scale is 2ⁿ⁻¹
	tanhSmall = 0.625
	tanhBig   = 44 // 2·44 = 88: exp stays finite, 2/(e+1) < ulp(1)/2
	// tanh(y) = y + y·z·q(z), z = y², for |y| < tanhSmall: q is a least
	// squares fit of degree 4 (within 0.8 ulp of tanh in float32).
	tanhQ0 = -0.3333328068256378
	tanhQ1 = 0.133314311504364
	tanhQ2 = -0.05373915657401085
	tanhQ3 = 0.020637862384319305
	tanhQ4 = -0.005704042501747608
)

// Exp32 is e^x in float32 for x ≥ −86 (within 2 ulps; +Inf above
// log(MaxFloat32) ≈ 88.72). Below −86 it gives e^−86 ≈ 4.4e−38 instead of
// smaller numbers. NaN gives +Inf (the clamp maps it to 89), as its vector
// twin does.
func Exp32(x float32) float32 {
	if !(x < expMax) {
		x = expMax
	}
	if !(x > expMin) {
		x = expMin
	}
	t := float32(x*expLog2e) + expMagic
	n := t - expMagic
	r := x - float32(n*expLn2Hi)
	r -= float32(n * expLn2Lo)
	// 1 + r + r²·w(r), w = c2 + c3·r + … + c7·r⁵ in pairs (Estrin's
	// scheme: a shorter chain of dependent operations than Horner's, which
	// the vector twin is bound by).
	r2 := float32(r * r)
	u23 := float32(expC3*r) + expC2
	u45 := float32(expC5*r) + expC4
	u67 := float32(expC7*r) + expC6
	w := u45 + float32(r2*u67)
	w = u23 + float32(r2*w)
	p := 1 + (r + float32(r2*w))
	s := math.Float32frombits((math.Float32bits(t) + expBias1) << 23)
	return float32(p*s) * 2
}

// Tanh32 is tanh(y) in float32 (within 2 ulps): a polynomial for
// |y| < 0.625, 1 − 2/(e^{2|y|} + 1) with y's sign above it.
func Tanh32(y float32) float32 {
	a := math.Float32frombits(math.Float32bits(y) &^ (1 << 31))
	if a < tanhSmall {
		z := float32(y * y)
		q := float32(tanhQ4*z) + tanhQ3
		q = float32(q*z) + tanhQ2
		q = float32(q*z) + tanhQ1
		q = float32(q*z) + tanhQ0
		p := y + float32(y*float32(z*q))
		// y's sign (already p's but for −0, which the sum makes +0).
		return math.Float32frombits(math.Float32bits(p) | math.Float32bits(y)&(1<<31))
	}
	if !(a < tanhBig) { // NaN too, as the vector twin's VMINPS
		a = tanhBig
	}
	e := Exp32(a * 2)
	r := 1 - 2/(e+1)
	return math.Float32frombits(math.Float32bits(r) | math.Float32bits(y)&(1<<31))
}
