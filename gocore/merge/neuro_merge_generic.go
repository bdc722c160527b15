//go:build !(goexperiment.simd && amd64)

package merge

// subKeepTopVec is subKeepTop's loop: the plain build's is subKeepTopGo.
func subKeepTopVec(tau, x, b []float32, bits uint32, allow int) int {
	return subKeepTopGo(tau, x, b, bits, allow)
}
