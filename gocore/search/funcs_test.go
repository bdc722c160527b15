package search

import "math"

// Benchmark functions, all with global minimum 0.
func sphere(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += v * v
	}
	return s
}

// rosenbrock has its minimum at (1, …, 1).
func rosenbrock(x []float64) float64 {
	var s float64
	for i := 0; i+1 < len(x); i++ {
		a := x[i+1] - x[i]*x[i]
		b := 1 - x[i]
		s += 100*a*a + b*b
	}
	return s
}

// rastrigin has its minimum at 0; the nearest local minima are at f ≈ 1.
func rastrigin(x []float64) float64 {
	s := 10 * float64(len(x))
	for _, v := range x {
		s += v*v - 10*math.Cos(2*math.Pi*v)
	}
	return s
}

// runUntil drives o on f (minimised) until the best value is below tol or
// maxEvals fitness values were told; it returns the best value and evals used.
func runUntil(o Optimizer, f func([]float64) float64, tol float64, maxEvals int) (best float64, evals int) {
	best = math.Inf(1)
	for evals < maxEvals {
		xs := o.Ask()
		fs := make([]float64, len(xs))
		for i, x := range xs {
			fs[i] = f(x)
		}
		if err := o.Tell(fs); err != nil {
			panic(err)
		}
		evals += len(xs)
		_, best = o.Best()
		if best < tol {
			break
		}
	}
	return best, evals
}
