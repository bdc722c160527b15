//go:build !race

package merge

// raceBuild: the tests run under the race detector (see sampleCase).
const raceBuild = false
