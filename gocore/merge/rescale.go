package merge

import "github.com/npsfuse/npsfuse/gocore/vec"

// mergekit's rescale (sparsify.py, rescaled_masked_tensor with the L1
// norm): after a sparsifier drops entries of a task vector τ, the kept ones
// are multiplied by one factor per tensor and model, Σ|τ| / Σ|τ̂| (τ̂ the
// kept entries), which restores the L1 norm; when either sum is below 1e-7
// the factor is 1. The sums are taken in float64 over the whole tensor
// (chunks summed in order, so the factor does not depend on the thread
// count; within a chunk over 8 lanes, see dellaAbsSum, for DARE and DELLA
// alike) and the factor is their float32 quotient. Without Rescale the
// factor is 1: the kept entries keep their values.

// rescaleEps is mergekit's tolerance below which a sum is not rescaled.
const rescaleEps = 1e-7

// masker zeroes the entries a sparsifier drops from chunk ch of model m's
// τ, without rescaling the others.
type masker func(e *engine, m int, ch chunkRef, tau []float32)

// prepareRescale computes the rescale factors of the units' tensors with
// the sparsifier's mask (nothing without Rescale).
func (e *engine) prepareRescale(units []int, mask masker) error {
	if !e.p.Rescale {
		return nil
	}
	return e.prepareRescaleSums(units, maskedSums(mask))
}

// rescaleSummer returns Σ|τ| and Σ|τ̂| over chunk ch of model m's τ (which
// it may overwrite).
type rescaleSummer func(e *engine, m int, ch chunkRef, tau []float32) (before, after float64)

// prepareRescaleSums computes the rescale factors of the units' tensors
// from the (Σ|τ|, Σ|τ̂|) pairs that sums returns for every chunk and model
// (whatever Rescale says).
func (e *engine) prepareRescaleSums(units []int, sums rescaleSummer) error {
	return e.prepareRescaleChunks(units, func(ch chunkRef, ws *workspace, acc []float64) error {
		return e.rescaleChunkSums(ch, ws, acc, sums)
	})
}

// rescaleChunkSums sets acc[2m], acc[2m+1] to the (Σ|τ|, Σ|τ̂|) pair that
// sums returns for chunk ch of model m, for every model.
func (e *engine) rescaleChunkSums(ch chunkRef, ws *workspace, acc []float64, sums rescaleSummer) error {
	base, err := e.loadBase(ch, ws)
	if err != nil {
		return err
	}
	n := ch.hi - ch.lo
	for m := range e.T {
		mv, err := e.loadModel(ch, m, ws, ws.models[m])
		if err != nil {
			return err
		}
		tau := ws.taus[m][:n]
		vec.Sub(tau, mv, base)
		acc[2*m], acc[2*m+1] = sums(e, m, ch, tau)
	}
	return nil
}

// maskedSums is the rescaleSummer of a sparsifier's mask: Σ|τ|, then the
// mask, then Σ|τ̂|.
func maskedSums(mask masker) rescaleSummer {
	return func(e *engine, m int, ch chunkRef, tau []float32) (before, after float64) {
		before = dellaAbsSum(tau)
		mask(e, m, ch, tau)
		return before, dellaAbsSum(tau)
	}
}

// prepareRescaleChunks computes the rescale factors of the units' tensors
// from per-chunk sums: fn loads chunk ch and sets acc[2m] = Σ|τ_m| and
// acc[2m+1] = Σ|τ̂_m| over it (whatever Rescale says).
func (e *engine) prepareRescaleChunks(units []int, fn func(ch chunkRef, ws *workspace, acc []float64) error) error {
	tis := e.unitTensors(units)
	tsums, err := e.tensorSums(tis, 2*e.T, fn)
	if err != nil {
		return err
	}
	if e.rescale == nil {
		e.rescale = make([][]float32, len(e.tensors))
	}
	for i, ti := range tis {
		f := make([]float32, e.T)
		for m := range e.T {
			before, after := float32(tsums[i][2*m]), float32(tsums[i][2*m+1])
			f[m] = 1
			if before >= rescaleEps && after >= rescaleEps {
				f[m] = before / after
			}
		}
		e.rescale[ti] = f
	}
	return nil
}

// rescaleFactor is tensor ti's factor for model m (1 without Rescale).
func (e *engine) rescaleFactor(ti, m int) float32 {
	if e.rescale == nil || e.rescale[ti] == nil {
		return 1
	}
	return e.rescale[ti][m]
}

// scaleKept multiplies tau by f (nothing when f is 1).
func scaleKept(tau []float32, f float32) {
	if f == 1 {
		return
	}
	for j := range tau {
		tau[j] *= f
	}
}

// rescaler is implemented by the sparsifiers that honour Rescale.
type rescaler interface{ rescales() }

func (dare) rescales()     {}
func (magprune) rescales() {}
func (topK) rescales()     {}
func (band) rescales()     {}
