package merge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// checkGeneralPath runs method with p on the same data twice, through
// mergeChunk's general path (generalOnly) and through the method's own
// merge pass, and fails unless both give the same error or the same
// output bits; with wantErr, an error is required. The data: T models of
// the given shapes in dtype dt, random or coarse (ties at the cuts, ±0),
// 2-D tensors stored transposed when asked.
func checkGeneralPath(t *testing.T, where, method string, p Params, dt tensor.DType, shapes [][]int, T int, coarse, transposed, wantErr bool) {
	t.Helper()
	defer func() { generalOnly = false }()
	var res [2][][]float32
	var errs [2]error
	for i, general := range []bool{true, false} {
		generalOnly = general
		r := rand.New(rand.NewPCG(5, 6))
		var ts []Tensor
		if coarse {
			ts = coarseMerge(r, dt, shapes, T)
		} else {
			ts = randomMerge(r, dt, shapes, T)
		}
		if transposed {
			for ti := range ts {
				ts[ti].Transposed = len(ts[ti].Shape) == 2
			}
		}
		errs[i] = Run(method, p, ts)
		res[i] = outputs(ts)
	}
	if fmt.Sprint(errs[0]) != fmt.Sprint(errs[1]) {
		t.Fatalf("%s: own merge pass: %v; general path: %v", where, errs[1], errs[0])
	}
	if wantErr && errs[0] == nil {
		t.Fatalf("%s: no error", where)
	}
	if errs[0] != nil {
		return
	}
	for ti := range res[0] {
		if !slices.EqualFunc(res[0][ti], res[1][ti], func(a, b float32) bool {
			return math.Float32bits(a) == math.Float32bits(b)
		}) {
			t.Fatalf("%s: tensor %d differs from the general path", where, ti)
		}
	}
}
