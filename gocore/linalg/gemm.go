package linalg

import (
	"sync"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// This file holds the package's own float32 matrix product, used instead of
// gonum's blas32 Sgemm for the products of RandomizedSVD and ApplyWeighted.
//
// Definition (the same for every kernel, thread count and blocking):
//
//	C[i][j] ← β·C[i][j]  (exactly 0 when β = 0, C[i][j] unchanged when β = 1)
//	for p = 0, 1, …, K−1:  if A[i][p] ≠ 0 { C[i][j] ← C[i][j] + A[i][p]·B[p][j] }
//
// with every product and every sum rounded to float32 separately (never a
// fused multiply-add). This is the operation order of gonum's Sgemm for
// (NoTrans, NoTrans), zero skipping included, so for that case the results
// are bit-identical to it. Vector kernels run across output columns j: lane c
// of a vector holds C[i][j+c] and sees exactly the scalar sequence above, so
// the AVX-512, AVX2 and plain-Go kernels agree bit for bit. The work is
// blocked over i (gemmMC rows per parallel task, gemmMR rows per kernel
// call) and j (panels of the kernel's width). The k loop is run in blocks
// of gemmKC so that a block of the packed B stays in cache, but the running
// sum of each element is carried from one block to the next in float32 (kept
// in a tile buffer, never a separate partial sum), so each C[i][j] is the one
// sequential chain of additions above.

const (
	gemmMC = 32 // output rows per parallel task
	// gemmMCT is gemmMC when A is stored transposed: packing then reads
	// gemmMCT contiguous values from each of kc rows apart in memory, and
	// longer runs use the memory bandwidth better.
	gemmMCT = 128
	gemmKC  = 512 // k values per block of the packed operands
)

// operand is a float32 matrix operand of gemm: element (i, p) is
// data[i*ld+p], or data[p*ld+i] when trans is set.
type operand struct {
	data  []float32
	ld    int
	trans bool
}

// at returns element (i, p).
func (o operand) at(i, p int) float32 {
	if o.trans {
		return o.data[p*o.ld+i]
	}
	return o.data[i*o.ld+p]
}

// set stores element (i, p).
func (o operand) set(i, p int, v float32) {
	if o.trans {
		o.data[p*o.ld+i] = v
	} else {
		o.data[i*o.ld+p] = v
	}
}

// microKernel computes one mr×nr tile: for p = 0…kc−1, every row r with
// ap[p*mr+r] ≠ 0 and every column c, acc[r*nr+c] += ap[p*mr+r]·bp[p*nr+c]
// (product and sum rounded separately). acc holds the running sums on entry
// and on return. fn may assume that the rows it must compute have no zero
// in ap (gemm checks when packing); careful makes no such assumption.
type microKernel struct {
	name        string
	mr, nr      int
	fn, careful func(kc int, ap, bp, acc []float32)
}

// scalarKernel returns the plain-Go kernel for mr×nr tiles.
func scalarKernel(mr, nr int) microKernel {
	fn := func(kc int, ap, bp, acc []float32) { kernelGo(kc, mr, nr, ap, bp, acc) }
	return microKernel{name: "go", mr: mr, nr: nr, fn: fn, careful: fn}
}

// kernelGo is the plain-Go microkernel (with zero skipping). The explicit
// float32 conversion of each product keeps the compiler from fusing the
// multiply and the add.
func kernelGo(kc, mr, nr int, ap, bp, acc []float32) {
	ap = ap[:kc*mr]
	bp = bp[:kc*nr]
	for p := 0; p < kc; p++ {
		b := bp[p*nr : (p+1)*nr]
		for r := 0; r < mr; r++ {
			a := ap[p*mr+r]
			if a == 0 {
				continue
			}
			t := acc[r*nr : (r+1)*nr]
			for c, x := range b {
				t[c] = t[c] + float32(a*x)
			}
		}
	}
}

// gemmKernel is the kernel gemm uses; tests swap it.
var gemmKernel = bestKernel()

// gemmScratch is a worker's reusable buffers.
type gemmScratch struct {
	ap, tiles []float32
}

var scratchPool = sync.Pool{New: func() any { return new(gemmScratch) }}

// gemm computes C = β·C + A·B (m×n, inner dimension k) for operands in
// either layout, as defined at the top of this file, on pool's
// goroutines. C must not overlap A or B.
func gemm(pool parallel.Pool, m, n, k int, a, b operand, beta float32, c operand) {
	gemmWith(pool, gemmKernel, m, n, k, a, b, beta, c)
}

// gemmWith is gemm with an explicit kernel.
func gemmWith(pool parallel.Pool, kern microKernel, m, n, k int, a, b operand, beta float32, c operand) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				c.set(i, j, scaleBeta(beta, c.at(i, j)))
			}
		}
		return
	}
	mr, nr := kern.mr, kern.nr
	panels := (n + nr - 1) / nr
	bp := packB(pool, b, k, n, nr, panels)
	mc := gemmMC
	if a.trans {
		mc = gemmMCT
	}
	tasks := (m + mc - 1) / mc
	kBlocks := (k + gemmKC - 1) / gemmKC
	pool.For(tasks, func(_, t int) {
		s := scratchPool.Get().(*gemmScratch)
		defer scratchPool.Put(s)
		i0 := t * mc
		rows := min(mc, m-i0)
		subs := (rows + mr - 1) / mr
		tileLen := mr * nr
		nTiles := 1
		if kBlocks > 1 {
			nTiles = subs * panels
		}
		s.ap = growF32(s.ap, subs*mr*min(k, gemmKC))
		s.tiles = growF32(s.tiles, nTiles*tileLen)
		var zero [gemmMCT]bool
		for k0 := 0; k0 < k; k0 += gemmKC {
			kc := min(gemmKC, k-k0)
			packA(s.ap, a, mr, i0, rows, k0, kc, zero[:subs])
			for sb := 0; sb < subs; sb++ {
				ap := s.ap[sb*mr*kc : (sb+1)*mr*kc]
				r0 := i0 + sb*mr
				nrows := min(mr, i0+rows-r0)
				fn := kern.fn
				if zero[sb] {
					fn = kern.careful
				}
				for p := 0; p < panels; p++ {
					ti := 0
					if kBlocks > 1 {
						ti = sb*panels + p
					}
					tile := s.tiles[ti*tileLen : (ti+1)*tileLen]
					c0 := p * nr
					ncols := min(nr, n-c0)
					if k0 == 0 {
						loadTile(tile, mr, nr, c, r0, nrows, c0, ncols, beta)
					}
					off := (p*k + k0) * nr
					fn(kc, ap, bp[off:off+kc*nr], tile)
					if k0+kc == k {
						storeTile(tile, nr, c, r0, nrows, c0, ncols)
					}
				}
			}
		}
	})
}

// scaleBeta returns β·x with BLAS's conventions for β = 0 and 1.
func scaleBeta(beta, x float32) float32 {
	switch beta {
	case 0:
		return 0
	case 1:
		return x
	}
	return beta * x
}

// growF32 returns s resliced to n elements, reallocating when cap(s) < n.
func growF32(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}

// packB copies the k×n operand b into panels nr columns wide, zero padded:
// element (p, j) of panel q = j/nr is at [(q*k+p)*nr + j%nr].
func packB(pool parallel.Pool, b operand, k, n, nr, panels int) []float32 {
	bp := make([]float32, panels*k*nr)
	pool.For(panels, func(_, q int) {
		j0 := q * nr
		w := min(nr, n-j0)
		dst := bp[q*k*nr : (q+1)*k*nr]
		if b.trans {
			// Row j of the storage holds column j of the operand.
			for c := 0; c < w; c++ {
				src := b.data[(j0+c)*b.ld : (j0+c)*b.ld+k]
				for p, v := range src {
					dst[p*nr+c] = v
				}
			}
			return
		}
		for p := 0; p < k; p++ {
			copy(dst[p*nr:p*nr+w], b.data[p*b.ld+j0:p*b.ld+j0+w])
		}
	})
	return bp
}

// packA copies rows i0…i0+rows−1, columns k0…k0+kc−1 of the operand a
// into dst as consecutive mr-row panels (element (r, p) of panel s at
// [s*mr*kc + p*mr + r]), zero padding the rows past the end, and sets
// zero[s] when panel s has a zero in one of its real rows.
func packA(dst []float32, a operand, mr, i0, rows, k0, kc int, zero []bool) {
	subs := len(zero)
	dst = dst[:subs*mr*kc]
	defer findZeros(dst, mr, rows, kc, zero)
	if rows < subs*mr {
		clear(dst[(subs-1)*mr*kc:])
	}
	if a.trans {
		// Row p of the storage holds column p of the operand: read the
		// rows of the block across, a contiguous run of `rows` values.
		for p := 0; p < kc; p++ {
			src := a.data[(k0+p)*a.ld+i0 : (k0+p)*a.ld+i0+rows]
			if mr == 2 && rows%2 == 0 {
				d := dst[2*p:]
				for s := 0; s < rows/2; s++ {
					d[s*2*kc], d[s*2*kc+1] = src[2*s], src[2*s+1]
				}
				continue
			}
			for s, x0 := 0, 0; x0 < rows; s, x0 = s+1, x0+mr {
				d := dst[s*mr*kc+p*mr : s*mr*kc+p*mr+mr]
				for r, v := range src[x0:min(x0+mr, rows)] {
					d[r] = v
				}
			}
		}
		return
	}
	for x := 0; x < rows; x++ {
		src := a.data[(i0+x)*a.ld+k0 : (i0+x)*a.ld+k0+kc]
		panel := dst[(x/mr)*mr*kc : (x/mr+1)*mr*kc]
		r := x % mr
		for p, v := range src {
			panel[p*mr+r] = v
		}
	}
}

// findZeros sets zero[s] when panel s of the packed block ap (see packA)
// has a zero in one of its real rows (the first rows of the block).
func findZeros(ap []float32, mr, rows, kc int, zero []bool) {
	for s := range zero {
		zero[s] = false
		panel := ap[s*mr*kc : (s+1)*mr*kc]
		if n := rows - s*mr; n < mr {
			// Last panel: only its first n rows are real.
			for p := 0; p < kc && !zero[s]; p++ {
				for _, v := range panel[p*mr : p*mr+n] {
					if v == 0 {
						zero[s] = true
						break
					}
				}
			}
			continue
		}
		for _, v := range panel {
			if v == 0 {
				zero[s] = true
				break
			}
		}
	}
}

// loadTile fills the mr×nr tile with β·C over the nrows×ncols block at
// (r0, c0), and zeros elsewhere.
func loadTile(tile []float32, mr, nr int, c operand, r0, nrows, c0, ncols int, beta float32) {
	if beta == 0 || nrows < mr || ncols < nr {
		clear(tile)
		if beta == 0 {
			return
		}
	}
	for r := 0; r < nrows; r++ {
		t := tile[r*nr : r*nr+ncols]
		if !c.trans {
			src := c.data[(r0+r)*c.ld+c0 : (r0+r)*c.ld+c0+ncols]
			if beta == 1 {
				copy(t, src)
				continue
			}
			for j, v := range src {
				t[j] = beta * v
			}
			continue
		}
		for j := range t {
			t[j] = scaleBeta(beta, c.data[(c0+j)*c.ld+r0+r])
		}
	}
}

// storeTile writes the nrows×ncols block of the tile to C at (r0, c0).
func storeTile(tile []float32, nr int, c operand, r0, nrows, c0, ncols int) {
	for r := 0; r < nrows; r++ {
		t := tile[r*nr : r*nr+ncols]
		if !c.trans {
			copy(c.data[(r0+r)*c.ld+c0:(r0+r)*c.ld+c0+ncols], t)
			continue
		}
		for j, v := range t {
			c.data[(c0+j)*c.ld+r0+r] = v
		}
	}
}
