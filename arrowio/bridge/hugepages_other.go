//go:build !linux

package bridge

import "github.com/npsfuse/npsfuse/gocore/tensor"

// HugePageMin is the smallest tensor AdviseHugePages advises.
const HugePageMin = 8 << 20

// AdviseHugePages does nothing outside Linux (see the Linux version).
func AdviseHugePages(tensor.Vec) {}
