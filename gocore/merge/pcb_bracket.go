package merge

import (
	"math"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// PCB's β selection by a bracket from a sample (issue 15): the cut of
// model m is the k-th largest β key of the unit, and its maximum the
// largest. Instead of a histogram of every key and a second pass
// collecting the keys of the cut's bin (selectKeys), a strided sample of
// the unit's entries (pcbSampleStride: blocks of 16 entries spread over
// each chunk) is scored first; two of the sample's order statistics
// around the cut's expected rank, six standard deviations of a binomial
// rank and a few ranks more apart, bracket it. The one pass over the unit
// that scores every entry then counts, per model, the keys above the
// bracket and collects those inside it (a few per cent of them) while
// they are in the cache (pcbScan), and keeps the maximum. When the cut
// lies inside (keys above < k ≤ keys above + keys inside), it is the
// (k − above)-th largest of the collected keys: the same key as any
// exact selection, whatever the sample and the scheduling. Otherwise
// (a sample that misrepresents the unit) selectKeys runs as before. The
// keys of the pass are kept for the merge pass as selectKeys keeps them.

// pcbBracketMin is the smallest unit that takes the bracket path (a
// variable for the tests).
var pcbBracketMin int64 = 1 << 16

// pcbSampleBlock entries at a time, pcbSampleBlocks blocks per chunk make
// the sample (blocks evenly spaced over the chunk).
const (
	pcbSampleBlock  = 16
	pcbSampleBlocks = 8
)

// pcbBracketSigmas is the bracket's half width in standard deviations of
// the sample rank, plus pcbBracketSlack ranks (variables for the tests,
// which narrow the bracket to make it miss).
var pcbBracketSigmas, pcbBracketSlack float64 = 6, 16

// pcbSampleBlocksOf lists the block offsets of a chunk of n entries: all
// of it when it is small, else pcbSampleBlocks blocks evenly spaced.
func pcbSampleBlocksOf(n int, dst []int) []int {
	dst = dst[:0]
	if n <= pcbSampleBlock*pcbSampleBlocks {
		for o := 0; o < n; o += pcbSampleBlock {
			dst = append(dst, o)
		}
		return dst
	}
	step := n / pcbSampleBlocks
	for b := range pcbSampleBlocks {
		dst = append(dst, b*step+(step-pcbSampleBlock)/2)
	}
	return dst
}

// pcbSampleLen is how many entries pcbSampleBlocksOf's blocks of a chunk
// of n entries hold.
func pcbSampleLen(n int) int {
	if n <= pcbSampleBlock*pcbSampleBlocks {
		return n
	}
	return pcbSampleBlock * pcbSampleBlocks
}

// pcbBracket is model m's bracket: the cut's key lies in [lo, hi] when
// above < k ≤ above + inside.
type pcbBracket struct {
	k      int64  // the cut's rank from the top
	lo, hi uint32 // the bracket's keys
}

// pcbBetaBracket finds every model's β cut (rank kcut[m] from the top)
// and maximum over unit un by the bracket path. It returns the keys (cut
// and maximum per model, as selectKeys's targets 2m and 2m+1), the unit's
// keys chunk by chunk when keep, and ok = false when a bracket missed its
// cut (nothing kept): the caller then selects with selectKeys.
func (e *engine) pcbBetaBracket(un unit, cuts []pcbCut, kcut []int64, keep bool, workers int) (res []uint32, ck *pcbChunkKeys, ok bool) {
	T := e.T
	chunks := un.chunks
	workers = max(1, min(workers, len(chunks)))
	sfirst := make([]int, len(chunks)+1)
	var total int
	for c, ch := range chunks {
		total += ch.hi - ch.lo
		sfirst[c+1] = sfirst[c] + pcbSampleLen(ch.hi-ch.lo)
	}
	S := sfirst[len(chunks)]
	if keep {
		ck = &pcbChunkKeys{T: T, views: make([][]uint32, len(chunks)*T), bufs: make([]*[]uint32, len(chunks))}
	}

	// The sample's keys, per model in chunk order.
	sample := make([][]uint32, T)
	for m := range sample {
		sample[m] = make([]uint32, S)
	}
	views := make([][][]uint32, workers)
	for w := range views {
		views[w] = make([][]uint32, T)
	}
	parallel.ForN(len(chunks), workers, func(w, c int) {
		ch := chunks[c]
		ws := e.workspace()
		defer e.scratch.Put(ws)
		t := &e.tensors[ch.ti]
		var bo [pcbSampleBlocks]int
		blocks := pcbSampleBlocksOf(ch.hi-ch.lo, bo[:0])
		ns := sfirst[c+1] - sfirst[c]
		// Gather the blocks of the base and the models into the
		// workspace's buffers (entry by entry the same β as in place).
		base := ws.base[:ns]
		xs := ws.views[:T:T]
		for m := range xs {
			xs[m] = ws.models[m][:ns]
		}
		for i, o := range blocks {
			w := min(pcbSampleBlock, ch.hi-ch.lo-o)
			sub := chunkRef{ti: ch.ti, lo: ch.lo + o, hi: ch.lo + o + w}
			dst := base[i*pcbSampleBlock : i*pcbSampleBlock+w]
			copy(dst, e.view(t.Base, sub, ws, ws.out))
			for m := range xs {
				copy(xs[m][i*pcbSampleBlock:i*pcbSampleBlock+w], e.view(t.Models[m], sub, ws, ws.out))
			}
		}
		dst := views[w]
		for m := range dst {
			dst[m] = sample[m][sfirst[c]:sfirst[c+1]]
		}
		pcbBetaKeys(dst, base, xs, cuts, ns)
	})
	br := make([]pcbBracket, T)
	parallel.ForN(T, workers, func(_, m int) {
		br[m] = pcbBracketFor(sample[m], kcut[m], int64(total))
	})

	// The pass: every key, counted against the brackets, the inside ones
	// collected, the maximum kept.
	st := make([][]pcbScanState, workers)
	scratch := make([][][]uint32, workers)
	defer func() {
		for w := range st {
			for m := range st[w] {
				if l := st[w][m].cand; cap(l) > 0 {
					l = l[:0]
					pcbCandPool.Put(&l)
				}
			}
		}
	}()
	for w := range workers {
		st[w] = make([]pcbScanState, T)
		for m := range T {
			st[w][m] = pcbScanState{lo: br[m].lo, hi: br[m].hi, collect: br[m].lo != br[m].hi}
			if st[w][m].collect {
				if p, _ := pcbCandPool.Get().(*[]uint32); p != nil {
					st[w][m].cand = (*p)[:0]
				}
			}
		}
		if ck == nil {
			scratch[w] = make([][]uint32, T)
			for m := range T {
				scratch[w][m] = make([]uint32, max(e.maxChunk, 1))
			}
		}
	}
	parallel.ForN(len(chunks), workers, func(w, c int) {
		ch := chunks[c]
		n := ch.hi - ch.lo
		dst := views[w]
		if ck != nil {
			dst = ck.get(c, n)
		} else {
			for m := range dst {
				dst[m] = scratch[w][m][:n]
			}
		}
		ws := e.workspace()
		t := &e.tensors[ch.ti]
		base := e.view(t.Base, ch, ws, ws.base)
		xs := ws.views[:T:T]
		for m := range xs {
			xs[m] = e.view(t.Models[m], ch, ws, ws.models[m])
		}
		pcbBetaScan(dst, base, xs, cuts, n, st[w])
		e.scratch.Put(ws)
	})
	// Per model: the counts, then the cut among the collected keys (the
	// models in parallel: a list holds a few per cent of the unit's keys).
	res = make([]uint32, 2*T)
	hit := make([]bool, T)
	parallel.ForN(T, workers, func(_, m int) {
		var a, in int64
		for w := range workers {
			s := &st[w][m]
			a += s.above
			in += s.inside
			res[2*m+1] = max(res[2*m+1], s.mx)
		}
		k := kcut[m]
		if !(a < k && k <= a+in) {
			return
		}
		hit[m] = true
		if !st[0][m].collect {
			res[2*m] = br[m].lo // a one-key bracket that holds the cut
			return
		}
		ls := make([][]uint32, workers)
		for w := range workers {
			ls[w] = st[w][m].cand
		}
		res[2*m] = kthLargestKeys(ls, k-a)
	})
	for _, h := range hit {
		if !h {
			if ck != nil {
				ck.putAll()
			}
			return nil, nil, false
		}
	}
	return res, ck, true
}

// pcbCandPool recycles the lists of keys collected inside the brackets
// (*[]uint32, empty): fresh memory costs a page fault per 4 KiB, and the
// lists of a large unit hold a few per cent of its keys.
var pcbCandPool sync.Pool

// pcbBracketFor brackets the k-th largest of d keys by two order
// statistics of sample (d's keys at evenly spread places): the sample
// ranks k·S/d ∓ (pcbBracketSigmas standard deviations + pcbBracketSlack);
// beyond the sample's ends the bracket is open (hi = MaxUint32, lo = 0).
func pcbBracketFor(sample []uint32, k, d int64) pcbBracket {
	S := int64(len(sample))
	b := pcbBracket{k: k, lo: 0, hi: math.MaxUint32}
	if S == 0 {
		return b
	}
	p := float64(k) / float64(d)
	ks := p * float64(S)
	half := pcbBracketSigmas*math.Sqrt(float64(S)*p*(1-p)) + pcbBracketSlack
	if r := int64(math.Floor(ks - half)); r >= 1 {
		b.hi = kthLargestKeys([][]uint32{sample}, r)
	}
	if r := int64(math.Ceil(ks + half)); r <= S {
		b.lo = kthLargestKeys([][]uint32{sample}, r)
	}
	return b
}

// kthLargestKeys is the rem-th largest (1 ≤ rem ≤ their count) of the
// keys of lists: a radix pass over the top 11 bits, then kthLargestLow.
func kthLargestKeys(lists [][]uint32, rem int64) uint32 {
	var h [keyBins]int64
	for _, keys := range lists {
		for _, k := range keys {
			h[k>>keyTopShift]++
		}
	}
	b, cum := pickBin(func(b int) int64 { return h[b] }, keyBins, rem)
	return kthLargestLow(lists, uint32(b), rem-cum)
}

// pcbScanState is one worker's count of one model's keys against the
// model's bracket [lo, hi]: how many lie above and inside it, the inside
// ones themselves when collect (without, the bracket is one key, lo = hi,
// which is then the cut when it holds it), and the largest key.
type pcbScanState struct {
	lo, hi        uint32
	collect       bool
	above, inside int64
	mx            uint32
	cand          []uint32
}

// scan counts keys (pcbScan).
func (s *pcbScanState) scan(keys []uint32) {
	s.add(pcbScan(keys, s.lo, s.hi, s.collect, s.cand))
}

// scanGo counts keys with the plain-Go twin.
func (s *pcbScanState) scanGo(keys []uint32) {
	s.add(pcbScanGo(keys, s.lo, s.hi, s.collect, s.cand))
}

func (s *pcbScanState) add(above, inside int, mx uint32, cand []uint32) {
	s.above += int64(above)
	s.inside += int64(inside)
	s.mx = max(s.mx, mx)
	s.cand = cand
}

// pcbScanGo counts the keys above hi and those in [lo, hi], appending the
// latter to cand with collect, and returns the largest key (0 for none):
// the plain-Go twin of pcbScan.
func pcbScanGo(keys []uint32, lo, hi uint32, collect bool, cand []uint32) (above, inside int, mx uint32, out []uint32) {
	for _, k := range keys {
		mx = max(mx, k)
		if k > hi {
			above++
		} else if k >= lo {
			inside++
			if collect {
				cand = append(cand, k)
			}
		}
	}
	return above, inside, mx, cand
}
