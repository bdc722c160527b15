package neuro

// combineRow writes a merged neuron in one pass: out[j] = w[j] + o_j with
// o_j = cw·w[j], then o_j = o_j + b[i]·taus[i][j] for i in order, every
// product and sum rounded to float32 — the arithmetic of Row's former
// three passes (a scaling loop, gonum's Saxpy per task, whose assembly
// multiplies and adds without fusing, and the final add). taus holds only
// the rows whose coefficient is not zero: an axpy with b = 0 would turn
// a −0 into +0. Every row is at least len(out) long.
func combineRow(out, w []float32, taus [][]float32, b []float32, cw float32) {
	n := len(out)
	w = w[:n]
	for _, t := range taus {
		_ = t[:n]
	}
	if len(b) != len(taus) {
		panic("neuro.combineRow: one coefficient per row")
	}
	combineRowVec(out, w, taus, b, cw)
}

// combineRowGo is combineRow's scalar twin. The float32 conversions keep
// the compiler from fusing a multiply and an add.
func combineRowGo(out, w []float32, taus [][]float32, b []float32, cw float32) {
	for j, x := range w[:len(out)] {
		o := float32(cw * x)
		for i, t := range taus {
			o += float32(b[i] * t[j])
		}
		out[j] = x + o
	}
}
