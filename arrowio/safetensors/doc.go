// Package safetensors reads and writes the Hugging Face safetensors format.
//
// # Format
//
// A safetensors file is laid out as
//
//	[0, 8)          N, the header length, an unsigned 64-bit little-endian integer
//	[8, 8+N)        the header: UTF-8 JSON, one object
//	[8+N, EOF)      the data section
//
// The header maps each tensor name to
//
//	{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
//
// where begin and end are byte offsets relative to the first byte of the data
// section (8+N), and may also hold the reserved key "__metadata__" whose value
// is an object of string to string. Tensor data is stored row-major (C order),
// little-endian, with no padding between elements. Reference: the format
// description and the Rust implementation in github.com/huggingface/safetensors
// (crate safetensors, module tensor; Python package safetensors 0.8.0 was used
// to check the behaviour this package reproduces).
//
// # Validation
//
// [Open] and [OpenBytes] validate the whole header before returning, with the
// same rules as the reference implementation:
//
//   - the file holds at least the 8-byte length prefix ([ErrTruncated]);
//   - N <= [MaxHeaderSize] = 100,000,000 bytes ([ErrHeaderTooLarge]), checked
//     before N is compared with the file size, as the reference does;
//   - 8+N <= file size ([ErrTruncated]);
//   - the header is valid UTF-8 and exactly one JSON object, optionally
//     surrounded by JSON white space (the writer pads with spaces); every
//     tensor entry is an object with a string "dtype", an array "shape" of
//     integers and an array "data_offsets" of exactly two integers (JSON
//     integer literals: 2.0 and 1e3 are refused, as by the reference); other
//     keys inside an entry are ignored, as the reference ignores them
//     ([ErrBadHeader]);
//   - "__metadata__" is null or an object of strings ([ErrBadHeader]);
//   - each dtype is one of the names listed in [DType] ([ErrDType]);
//   - no shape dimension is negative (a minus sign, even on 0, counts, as
//     the reference refuses "-0") or larger than 2^63-1 ([ErrShape]);
//   - no offset is negative, begin <= end <= data size ([ErrOffsets]);
//   - end-begin equals the element count times the element size, computed
//     without overflow, and a whole number of bytes for the sub-byte dtypes
//     F4, F6_E2M3 and F6_E3M2 ([ErrSizeMismatch]);
//   - the tensors, sorted by (begin, end), tile the data section exactly: no
//     two overlap, no byte is left between two tensors or before the first,
//     and the last one ends at the end of the file ([ErrOffsets]). The
//     reference (SafeTensors::read_metadata/Metadata::validate) rejects holes
//     and trailing bytes in the same way, so this package does too;
//     zero-length tensors may sit at any offset that is the end of another
//     tensor (or 0);
//   - tensor names are unique ([ErrDuplicate]), and so are "__metadata__"
//     keys ([ErrBadHeader]). This is stricter than the reference, which
//     silently keeps the last of two equal JSON keys; a header with duplicate
//     keys is ambiguous, so it is refused.
//
// Every validation error is an [*Error] naming the file path and, where one is
// involved, the tensor; its Unwrap returns one of the sentinel errors above so
// errors.Is works.
//
// # Writing
//
// [NewWriter] takes the list of tensors up front, computes their offsets in
// the given order, writes the header (padded with spaces so the data section
// starts at an 8-byte aligned file offset, as the reference writer does) into
// a temporary file next to the destination, and lets the caller stream the
// tensors in any order, from several goroutines if wanted.
// [Writer.Close] checks that every tensor got exactly its byte length,
// fsyncs, and renames the temporary file onto the destination, so the
// destination either keeps its old content or holds a complete new file.
// [Save] is the one-call form, with the reference writer's tensor order
// (dtype alignment descending, then name), which makes its output
// byte-identical to the reference writer's when there is at most one metadata
// key (the reference writes metadata keys in hash-map order; Save sorts them).
package safetensors
