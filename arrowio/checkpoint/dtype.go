package checkpoint

import (
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// KernelDType maps a safetensors dtype to the kernels' storage dtype; ok is
// false for dtypes the kernels do not compute on (integers, booleans, 8-bit
// floats, F64), which checkpoint consumers copy unchanged.
func KernelDType(d safetensors.DType) (tensor.DType, bool) {
	switch d {
	case safetensors.F32:
		return tensor.F32, true
	case safetensors.F16:
		return tensor.F16, true
	case safetensors.BF16:
		return tensor.BF16, true
	}
	return 0, false
}

// FromKernel maps a kernel dtype to its safetensors dtype.
func FromKernel(d tensor.DType) safetensors.DType {
	switch d {
	case tensor.F16:
		return safetensors.F16
	case tensor.BF16:
		return safetensors.BF16
	}
	return safetensors.F32
}
