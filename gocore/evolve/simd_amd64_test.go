//go:build goexperiment.simd && amd64

package evolve

// setAccelerated switches the vector loops on or off (on only takes effect
// when the CPU has AVX2) and returns a function that restores the setting.
func setAccelerated(on bool) (restore func()) {
	was := accelerated
	accelerated = on && was
	return func() { accelerated = was }
}
