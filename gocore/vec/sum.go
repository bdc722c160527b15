package vec

// sumLanes is SumF64's lane count: entry j is added to lane j mod 32.
const sumLanes = 32

// SumF64 returns Σ x in float64, in an order fixed whatever the build and
// CPU: entry j is added to lane j mod 32 (each lane in index order, from
// +0), and the lanes are folded by halves — lane i += lane i+16 for
// i < 16, then i += i+8, i += i+4, i += i+2, and lane 0 + lane 1. Thirty-two
// independent chains keep the adder busy where one chain would wait on
// every add.
func SumF64(x []float32) float64 { return sumF64(x) }

// sumF64Go is SumF64's scalar twin.
func sumF64Go(x []float32) float64 {
	var s [sumLanes]float64
	return sumF64Tail(x, 0, &s)
}

// sumF64Tail adds entries j ≥ from to the lanes and folds them.
func sumF64Tail(x []float32, from int, s *[sumLanes]float64) float64 {
	for j := from; j < len(x); j++ {
		s[j&(sumLanes-1)] += float64(x[j])
	}
	for h := sumLanes / 2; h >= 2; h /= 2 {
		for i := range h {
			s[i] += s[i+h]
		}
	}
	return s[0] + s[1]
}
