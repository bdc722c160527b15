package merge

import "slices"

// WholeModel reports whether merging any of the Merger's tensors reads
// every tensor first (a global scope, or statistics over the whole model):
// a caller that provides the inputs one tensor at a time must then provide
// them all before the first Tensor call. (A file of its own, not
// engine.go: one accessor.)
func (m *Merger) WholeModel() bool {
	if m.tw != nil {
		return slices.ContainsFunc(m.tw.subs, (*Merger).WholeModel)
	}
	return m.e.wholeModel()
}
