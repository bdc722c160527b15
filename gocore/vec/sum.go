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

// SumLanes is SumF64's running state, for kernels that sum values as
// they produce them instead of storing them first: lane l holds the sum
// of the values of entries j ≡ l (mod 32) added so far, from +0, in index
// order. Filling the lanes in that order and calling Sum gives SumF64's
// bits.
type SumLanes [sumLanes]float64

// Add adds v, the value of entry j, to lane j mod 32.
func (s *SumLanes) Add(j int, v float32) { s[j&(sumLanes-1)] += float64(v) }

// Sum folds the lanes by halves, as SumF64 does, and returns the total.
// It leaves the lanes changed.
func (s *SumLanes) Sum() float64 {
	for h := sumLanes / 2; h >= 2; h /= 2 {
		for i := range h {
			s[i] += s[i+h]
		}
	}
	return s[0] + s[1]
}

// sumF64Go is SumF64's scalar twin.
func sumF64Go(x []float32) float64 {
	var s SumLanes
	return sumF64Tail(x, 0, &s)
}

// sumF64Tail adds entries j ≥ from to the lanes and folds them.
func sumF64Tail(x []float32, from int, s *SumLanes) float64 {
	for j := from; j < len(x); j++ {
		s.Add(j, x[j])
	}
	return s.Sum()
}
