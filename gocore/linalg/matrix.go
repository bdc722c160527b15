package linalg

import (
	"errors"
	"fmt"
	"math"
)

// Matrix is a dense row-major float32 matrix: element (i, j) is
// Data[i*Cols+j] and len(Data) must equal Rows*Cols. Functions of this package
// never retain or modify a Matrix argument unless their doc says so.
type Matrix struct {
	Rows, Cols int
	Data       []float32
}

// NewMatrix returns a zero Rows×Cols matrix backed by a fresh slice.
// It panics if a dimension is negative (as make does).
func NewMatrix(rows, cols int) Matrix {
	return Matrix{Rows: rows, Cols: cols, Data: make([]float32, rows*cols)}
}

// At returns element (i, j). It panics when i or j is out of range.
func (m Matrix) At(i, j int) float32 {
	if i < 0 || i >= m.Rows || j < 0 || j >= m.Cols {
		panic(fmt.Sprintf("linalg: index (%d, %d) out of range for %d×%d matrix", i, j, m.Rows, m.Cols))
	}
	return m.Data[i*m.Cols+j]
}

// Transpose returns a new Cols×Rows matrix holding mᵀ. O(Rows·Cols).
func (m Matrix) Transpose() Matrix {
	t := NewMatrix(m.Cols, m.Rows)
	for i := 0; i < m.Rows; i++ {
		row := m.Data[i*m.Cols : (i+1)*m.Cols]
		for j, v := range row {
			t.Data[j*m.Rows+i] = v
		}
	}
	return t
}

// errShape is wrapped by every shape validation error of this package.
var errShape = errors.New("linalg: bad shape")

// check reports whether m is a consistent matrix (non-negative dimensions and
// len(Data) == Rows*Cols). name is used in the error message.
func (m Matrix) check(name string) error {
	if m.Rows < 0 || m.Cols < 0 {
		return fmt.Errorf("%s is %d×%d: %w", name, m.Rows, m.Cols, errShape)
	}
	if len(m.Data) != m.Rows*m.Cols {
		return fmt.Errorf("%s is %d×%d but len(Data) = %d: %w", name, m.Rows, m.Cols, len(m.Data), errShape)
	}
	return nil
}

// firstNonFinite returns the index of the first NaN or ±Inf in x, or -1.
func firstNonFinite(x []float32) int {
	for i, v := range x {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return i
		}
	}
	return -1
}

// to64 widens src into dst (len(dst) >= len(src)).
func to64(dst []float64, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = float64(v)
	}
}

// to32 narrows src into dst (len(dst) >= len(src)).
func to32(dst []float32, src []float64) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = float32(v)
	}
}
