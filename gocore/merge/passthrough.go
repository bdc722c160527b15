package merge

// Passthrough (mergekit's passthrough): the one model's tensor as it is,
// or multiplied by its scale (mergekit's `scale`, default 1, which leaves
// every value unchanged: x·1 = x in float32; the zero value of Params
// multiplies by 0: DefaultParams gives 1). It is the
// method of frankenmerges, `slices:` configs that stack layer ranges of
// several models, where each slice has one source. The base is not read.
func init() {
	register(Method{Name: "passthrough", Sparsify: keepAll{}, Combine: passthrough{}})
}

type passthrough struct{}

func (passthrough) normalizes(Params) bool       { return false }
func (passthrough) prepare(*engine, []int) error { return nil }
func (passthrough) readsBase() bool              { return false }

func (p passthrough) combine(e *engine, ch chunkRef, base []float32, models, _ [][]float32, out []float32) {
	p.direct(e, ch, base, models, out)
}

// direct computes float32(x·float32(scale)), as PyTorch multiplies a
// float32 tensor by a Python float.
func (passthrough) direct(e *engine, _ chunkRef, _ []float32, models [][]float32, out []float32) {
	s := float32(e.p.Scale)
	if e.p.Scales != nil {
		s = float32(e.p.Scales[0])
	}
	for j, x := range models[0] {
		out[j] = x * s
	}
}
