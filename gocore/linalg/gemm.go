package linalg

import (
	"sync"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// This file holds the package's own float32 matrix product, used instead of
// gonum's blas32 Sgemm for the products of RandomizedSVD, GramSVD, Polar
// and ApplyWeighted.
//
// Definition (the same for every thread count and blocking):
//
//	C[i][j] ← β·C[i][j]  (exactly 0 when β = 0, C[i][j] unchanged when β = 1)
//	for p = 0, 1, …, K−1:  C[i][j] ← C[i][j] + A[i][p]·B[p][j]
//
// each output element being one sequential chain of float32 operations in
// p order, whatever the thread count, tile shape or k blocking. How a step
// rounds depends on the kernel family:
//
//   - Fused (the default on amd64 CPUs with AVX2+FMA or AVX-512 unless
//     built with -tags purego; assembly in gemm_fma_amd64.s): C ← fma(A[i][p], B[p][j], C), one rounding per
//     step and no zero skipping (fma(0, x, c) = c for finite x, so skipping
//     would only change a sign of zero or hide an Inf/NaN of B).
//   - Portable (plain Go; the archsimd AVX-512/AVX2 kernels of
//     gemm_simd_amd64.go; every build with -tags purego or off amd64): the
//     product and the sum rounded separately (never fused), A[i][p] = 0
//     skipped. This is the operation order of gonum's Sgemm for (NoTrans,
//     NoTrans), zero skipping included, so for that case the results are
//     bit-identical to it.
//
// Within a family every kernel gives the same bits; between the families
// an element differs by at most 3·K·2⁻²⁴·(|β·C| + Σ_p |A[i][p]·B[p][j]|)
// (each chain is within K·u resp. 2K·u of the exact sum, u = 2⁻²⁴), which
// gemm_fma_test.go checks. Vector kernels run across output columns j:
// lane c of a vector holds C[i][j+c] and sees exactly the scalar sequence
// above. The work is blocked over i (parallel tasks of a multiple of the
// kernel's mr rows, mr rows per kernel call) and j (panels of the kernel's
// width nr; for a short, wide C the tasks also split the panels). The
// fused kernels read an A stored by rows in place (no packing), and run a
// product whose A and B are both stored transposed as Cᵀ = Bᵀ·Aᵀ (the
// same fma chains). The k loop is run in blocks of the kernel's kc so that a
// block of the packed B panel stays in cache while it is reused by every
// mr-row panel of the task, but the running sum of each element is carried
// from one block to the next in float32 (kept in a tile buffer, never a
// separate partial sum), so each C[i][j] is the one sequential chain above.

const (
	gemmMC = 32 // output rows per parallel task
	// gemmMCT is gemmMC when A is stored transposed: packing then reads
	// gemmMCT contiguous values from each of kc rows apart in memory, and
	// longer runs use the memory bandwidth better.
	gemmMCT = 128
	gemmKC  = 512 // k values per block of the packed operands, by default
	// gemmShortWide is the largest m for which the fused kernels run C as
	// one block of rows (see gemmWith).
	gemmShortWide = 256
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

// microKernel computes one mr×nr tile: for p = 0…kc−1, every row r and
// every column c, acc[r*nr+c] += ap[p*mr+r]·bp[p*nr+c], rounded as its
// family says (see the top of this file; the portable kernels skip rows
// with ap[p*mr+r] = 0). acc holds the running sums on entry and on return.
// fn may assume that the rows it must compute have no zero in ap (gemm
// checks when packing); careful makes no such assumption (for the fused
// kernels, which skip nothing, the two are the same). direct, when not
// nil, is fn reading A where it lies instead of a packed panel: entry
// (r, p) at a[r*rs+p*cs]; gemm uses it for whole mr-row panels of an A
// stored by rows, which then needs no packing. kc, when not 0, overrides
// gemmKC as the k block length.
type microKernel struct {
	name        string
	mr, nr      int
	fn, careful func(kc int, ap, bp, acc []float32)
	direct      func(kc int, a []float32, rs, cs int, bp, acc []float32)
	fused       bool
	kc          int
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

// bestKernel returns the widest assembly FMA kernel the CPU runs, else the
// best portable kernel.
func bestKernel() microKernel {
	if ks := fmaKernels(); len(ks) > 0 {
		return ks[0]
	}
	return portableKernel()
}

// gemmScratch is a worker's reusable buffers.
type gemmScratch struct {
	ap, bp, tiles []float32
	zero          []bool
}

var scratchPool = sync.Pool{New: func() any { return new(gemmScratch) }}

// packBufs holds the buffers of packed B, reused from one product to the
// next (a swapped product packs a whole n×n operand).
var packBufs = sync.Pool{New: func() any { return new([]float32) }}

// gemm computes C = β·C + A·B (m×n, inner dimension k) for operands in
// either layout, as defined at the top of this file, on pool's
// goroutines. C must not overlap A or B.
func gemm(pool parallel.Pool, m, n, k int, a, b operand, beta float32, c operand) {
	gemmWith(pool, gemmKernel, m, n, k, a, b, beta, c)
}

// gemmWith is gemm with an explicit kernel.
func gemmWith(pool parallel.Pool, kern microKernel, m, n, k int, a, b operand, beta float32, c operand) {
	gemmPacked(pool, kern, m, n, k, a, b, beta, c, nil)
}

// packCache keeps a B operand packed whole (packB's layout) from one
// product to the next: RandomizedSVD multiplies the same A several times
// in the short, wide shape, whose tasks would otherwise each pack their
// blocks of A again for every product. The packed values are B's own, so
// the bits of the products do not depend on it. B's values must not change
// while it is cached (the cache knows the operand by its first element's
// address and its shape). The zero value is empty.
type packCache struct {
	data     []float32
	b        *float32 // B's first element: which operand is packed
	ld, k, n int
	nr       int
}

// gemmCacheMax is the largest B (in elements) gemmPacked keeps packed.
const gemmCacheMax = 1 << 24

// gemmPacked is gemmWith that, for a short, wide C, reads B packed whole
// from pc (packing it there first when pc holds another operand); pc nil,
// or a B larger than gemmCacheMax, packs per task as gemmWith does.
func gemmPacked(pool parallel.Pool, kern microKernel, m, n, k int, a, b operand, beta float32, c operand, pc *packCache) {
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
	if kern.fused && a.trans && b.trans {
		// Cᵀ = Bᵀ·Aᵀ with both factors stored by rows: A's rows are then
		// read in place (kern.direct) and B is packed by contiguous
		// copies. Each element is the same fma chain (the product in an
		// fma is exact, hence commutes), so the bits do not change.
		m, n = n, m
		a, b = operand{data: b.data, ld: b.ld}, operand{data: a.data, ld: a.ld}
		c.trans = !c.trans
	}
	mr, nr := kern.mr, kern.nr
	kcMax := gemmKC
	if kern.kc > 0 {
		kcMax = kern.kc
	}
	panels := (n + nr - 1) / nr
	mc := gemmMC
	if a.trans {
		mc = gemmMCT
	}
	// A short, wide C (the fused kernels only): one row block of all m
	// rows, so that each task packs its own kc×nr blocks of B right
	// before the kernels use them (B then goes through memory once, and
	// is never packed whole), unless pc keeps B packed whole for several
	// products; otherwise B is packed once, up front, for all row blocks
	// to share.
	shortWide := kern.fused && m <= gemmShortWide
	if shortWide {
		mc = m
	}
	mc = (mc + mr - 1) / mr * mr // whole mr-row panels in every task
	rowTasks := (m + mc - 1) / mc
	var bp []float32
	switch {
	case !shortWide:
		bpBuf := packBufs.Get().(*[]float32)
		defer packBufs.Put(bpBuf)
		bp = packB(pool, bpBuf, b, k, n, nr, panels)
	case pc != nil && !b.trans && k*n <= gemmCacheMax:
		if pc.b != &b.data[0] || pc.ld != b.ld || pc.k != k || pc.n != n || pc.nr != nr {
			pc.data = packB(pool, &pc.data, b, k, n, nr, panels)
			pc.b, pc.ld, pc.k, pc.n, pc.nr = &b.data[0], b.ld, k, n, nr
		}
		bp = pc.data
	}
	packEach := shortWide && bp == nil // each task packs its own blocks
	// Few row blocks: the tasks also split the column panels into groups,
	// for the threads to share the work. Which task computes an element
	// does not change its bits.
	groups := 1
	if threads := pool.Size(); rowTasks < 2*threads {
		groups = min(panels, (4*threads+rowTasks-1)/rowTasks)
	}
	perGroup := (panels + groups - 1) / groups
	groups = (panels + perGroup - 1) / perGroup
	kBlocks := (k + kcMax - 1) / kcMax
	pool.For(rowTasks*groups, func(_, t int) {
		s := scratchPool.Get().(*gemmScratch)
		defer scratchPool.Put(s)
		i0 := t / groups * mc
		p0 := t % groups * perGroup
		p1 := min(p0+perGroup, panels)
		rows := min(mc, m-i0)
		subs := (rows + mr - 1) / mr
		tileLen := mr * nr
		nTiles := 1
		if kBlocks > 1 {
			nTiles = subs * (p1 - p0)
		}
		s.ap = growF32(s.ap, subs*mr*min(k, kcMax))
		if packEach {
			s.bp = growF32(s.bp, min(k, kcMax)*nr*(p1-p0))
		}
		s.tiles = growF32(s.tiles, nTiles*tileLen)
		if cap(s.zero) < subs {
			s.zero = make([]bool, subs)
		}
		zero := s.zero[:subs]
		clear(zero)
		// With a direct kernel and A stored by rows, only a last partial
		// mr-row panel is packed (as panel 0 of s.ap).
		direct := kern.direct != nil && !a.trans
		for k0 := 0; k0 < k; k0 += kcMax {
			kc := min(kcMax, k-k0)
			switch {
			case !direct:
				packA(s.ap, a, mr, i0, rows, k0, kc, zero, !kern.fused)
			case rows%mr != 0:
				r0 := i0 + rows/mr*mr
				packA(s.ap, a, mr, r0, i0+rows-r0, k0, kc, zero[:1], false)
			}
			if packEach {
				// The task's kc×nr blocks of B, all its panels at once:
				// B's rows are read in runs of (p1−p0)·nr values.
				packBPanels(s.bp, b, k0, kc, p0*nr, min(p1*nr, n)-p0*nr, nr)
			}
			// Panel outer, row panel inner: the kc×nr block of packed B
			// stays in L1 while every mr-row panel of the task uses it.
			for p := p0; p < p1; p++ {
				c0 := p * nr
				ncols := min(nr, n-c0)
				var bpk []float32
				if packEach {
					bpk = s.bp[(p-p0)*kc*nr : (p-p0+1)*kc*nr]
				} else {
					off := (p*k + k0) * nr
					bpk = bp[off : off+kc*nr]
				}
				for sb := 0; sb < subs; sb++ {
					r0 := i0 + sb*mr
					nrows := min(mr, i0+rows-r0)
					fn := kern.fn
					if zero[sb] {
						fn = kern.careful
					}
					ti := 0
					if kBlocks > 1 {
						ti = sb*(p1-p0) + p - p0
					}
					tile := s.tiles[ti*tileLen : (ti+1)*tileLen]
					if k0 == 0 {
						loadTile(tile, mr, nr, c, r0, nrows, c0, ncols, beta)
					}
					switch {
					case !direct:
						fn(kc, s.ap[sb*mr*kc:(sb+1)*mr*kc], bpk, tile)
					case nrows < mr:
						fn(kc, s.ap[:mr*kc], bpk, tile)
					default:
						kern.direct(kc, a.data[r0*a.ld+k0:], a.ld, 1, bpk, tile)
					}
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
// element (p, j) of panel q = j/nr is at [(q*k+p)*nr + j%nr]. The panels
// go to *buf, grown when too short.
func packB(pool parallel.Pool, buf *[]float32, b operand, k, n, nr, panels int) []float32 {
	bp := growF32(*buf, panels*k*nr)
	*buf = bp
	if !b.trans {
		// B stored by rows: blocks of 64 rows, each row read once in
		// one run (a panel at a time would read nr values from every
		// row, one page apart).
		if n < panels*nr {
			clear(bp[(panels-1)*k*nr:])
		}
		pool.For((k+63)/64, func(_, t int) {
			for p := t * 64; p < min(k, t*64+64); p++ {
				src := b.data[p*b.ld : p*b.ld+n]
				for q, c0 := 0, 0; c0 < n; q, c0 = q+1, c0+nr {
					copy(bp[(q*k+p)*nr:(q*k+p+1)*nr], src[c0:min(c0+nr, n)])
				}
			}
		})
		return bp
	}
	pool.For(panels, func(_, q int) {
		j0 := q * nr
		packBBlock(bp[q*k*nr:(q+1)*k*nr], b, 0, k, j0, min(nr, n-j0), nr)
	})
	return bp
}

// packBBlock copies rows p0…p1−1, columns j0…j0+w−1 of the operand b into
// dst, nr values a row (element (p, j0+c) at [(p−p0)*nr + c]), zero
// padding columns w…nr−1.
func packBBlock(dst []float32, b operand, p0, p1, j0, w, nr int) {
	dst = dst[:(p1-p0)*nr]
	if w < nr {
		clear(dst)
	}
	if b.trans {
		// Row j of the storage holds column j of the operand. Blocks of
		// 64 k values keep the strided writes within L1.
		for q0 := p0; q0 < p1; q0 += 64 {
			q1 := min(q0+64, p1)
			for c := 0; c < w; c++ {
				src := b.data[(j0+c)*b.ld+q0 : (j0+c)*b.ld+q1]
				d := dst[(q0-p0)*nr+c:]
				for p, v := range src {
					d[p*nr] = v
				}
			}
		}
		return
	}
	for p := p0; p < p1; p++ {
		copy(dst[(p-p0)*nr:(p-p0)*nr+w], b.data[p*b.ld+j0:p*b.ld+j0+w])
	}
}

// packBPanels packs rows k0…k0+kc−1, columns j0…j0+w−1 of the operand b
// as consecutive kc×nr blocks of nr columns each, as packBBlock does one
// block (the last block zero padded). For b stored by rows it copies each
// row's run of w values in one visit.
func packBPanels(dst []float32, b operand, k0, kc, j0, w, nr int) {
	panels := (w + nr - 1) / nr
	dst = dst[:panels*kc*nr]
	if b.trans {
		for q := 0; q < panels; q++ {
			c0 := q * nr
			packBBlock(dst[q*kc*nr:(q+1)*kc*nr], b, k0, k0+kc, j0+c0, min(nr, w-c0), nr)
		}
		return
	}
	if w < panels*nr {
		clear(dst[(panels-1)*kc*nr:])
	}
	for p := 0; p < kc; p++ {
		src := b.data[(k0+p)*b.ld+j0 : (k0+p)*b.ld+j0+w]
		for q, c0 := 0, 0; c0 < w; q, c0 = q+1, c0+nr {
			copy(dst[q*kc*nr+p*nr:q*kc*nr+p*nr+nr], src[c0:min(c0+nr, w)])
		}
	}
}

// packA copies rows i0…i0+rows−1, columns k0…k0+kc−1 of the operand a
// into dst as consecutive mr-row panels (element (r, p) of panel s at
// [s*mr*kc + p*mr + r]), zero padding the rows past the end, and, when
// findZero is set, sets zero[s] when panel s has a zero in one of its real
// rows (else leaves zero all false).
func packA(dst []float32, a operand, mr, i0, rows, k0, kc int, zero []bool, findZero bool) {
	subs := len(zero)
	dst = dst[:subs*mr*kc]
	if findZero {
		defer findZeros(dst, mr, rows, kc, zero)
	}
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
	if c.trans {
		// Column by column: each storage row (nrows contiguous values,
		// one or two cache lines) is written in one visit.
		for j := 0; j < ncols; j++ {
			dst := c.data[(c0+j)*c.ld+r0 : (c0+j)*c.ld+r0+nrows]
			for r := range dst {
				dst[r] = tile[r*nr+j]
			}
		}
		return
	}
	for r := 0; r < nrows; r++ {
		copy(c.data[(r0+r)*c.ld+c0:(r0+r)*c.ld+c0+ncols], tile[r*nr:r*nr+ncols])
	}
}
