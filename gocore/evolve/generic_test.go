//go:build !(goexperiment.simd && amd64)

package evolve

// setAccelerated does nothing: this build has only the scalar loops.
func setAccelerated(bool) (restore func()) { return func() {} }
