package merge

// This file runs a whole-engine merge (Run) as a sequence of groups of
// selection units, each prepared and then merged before the next one is
// read, so that the merge pass finds the group's inputs still in the
// last-level cache instead of reading them from memory a second time (the
// TIES family, Breadcrumbs, DELLA and PCB read every input once to prepare
// and once to merge). A unit's preparation does not depend on the other
// units unless the method needs statistics over the whole model
// (engine.wholeModel, which keeps the prepare-everything-first order), so
// the results are bit for bit those of preparing every unit first; the
// streaming Merger relies on the same independence.

// interleaveBytes is the most input and output a group of units holds
// ((models + base + output) × 4 B per entry), unless one unit alone holds
// more: about what the last-level cache of a server CPU keeps of it (a
// variable for the tests).
var interleaveBytes int64 = 64 << 20

// unitGroups splits the selection units into consecutive groups of at
// most interleaveBytes (a larger unit is a group of its own).
func (e *engine) unitGroups() [][]int {
	perEntry := int64(e.T+2) * 4
	var groups [][]int
	var cur []int
	var bytes int64
	for u, un := range e.units() {
		b := un.n * perEntry
		if len(cur) > 0 && bytes+b > interleaveBytes {
			groups = append(groups, cur)
			cur, bytes = nil, 0
		}
		cur = append(cur, u)
		bytes += b
	}
	if len(cur) > 0 {
		groups = append(groups, cur)
	}
	return groups
}

// prepareAndMerge prepares and merges every tensor: group by group
// (unitGroups) when each unit can be prepared on its own (the per-tensor
// scope of a method without whole-model statistics), else every unit
// first. It stops at the first group that fails, with that group's error
// (the lowest-numbered failing chunk's within it), so a single bad input is
// reported as before; the outputs of the groups before it are written.
// When two tensors fail at different stages (a non-finite input found while
// preparing a later tensor, an overflow while merging an earlier one), the
// earlier tensor's error is now the one reported.
func (e *engine) prepareAndMerge() error {
	if e.wholeModel() || e.p.Scope == ScopeGlobal {
		if err := e.prepareAll(); err != nil {
			return err
		}
		return e.mergeChunks(e.chunks)
	}
	units := e.units()
	for _, g := range e.unitGroups() {
		if err := e.prepareUnits(g); err != nil {
			return err
		}
		// Per-tensor scope: unit u is tensor u, its chunks contiguous.
		last := g[len(g)-1]
		lo, hi := e.first[g[0]], e.first[last]+len(units[last].chunks)
		if err := e.mergeChunks(e.chunks[lo:hi]); err != nil {
			return err
		}
	}
	return nil
}
