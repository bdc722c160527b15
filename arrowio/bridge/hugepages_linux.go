package bridge

import (
	"syscall"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// HugePageMin is the smallest tensor AdviseHugePages advises (8 MiB: a few
// 2 MiB pages at least).
const HugePageMin = 8 << 20

// AdviseHugePages asks the kernel to back the pages of v, a freshly
// allocated output that nothing has touched yet, with transparent huge
// pages (madvise MADV_HUGEPAGE, which THP's usual "madvise" mode needs), so
// that the kernel's first writes take one page fault per 2 MiB instead of
// one per 4 KiB. Only the whole 4 KiB pages inside v's bytes are advised;
// the advice is a hint, and where it fails (no THP) nothing changes.
// Tensors under HugePageMin are left alone.
func AdviseHugePages(v tensor.Vec) {
	var b []byte
	switch {
	case v.DType == tensor.F32 && len(v.F32) > 0:
		b = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v.F32))), 4*len(v.F32))
	case v.DType != tensor.F32 && len(v.U16) > 0:
		b = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v.U16))), 2*len(v.U16))
	}
	if len(b) < HugePageMin {
		return
	}
	const page = 4096
	off := (page - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%page)) % page
	n := (len(b) - off) &^ (page - 1)
	_ = syscall.Madvise(b[off:off+n], syscall.MADV_HUGEPAGE)
}
