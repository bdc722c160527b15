// Package tensors moves named tensors in and out of npsfused without
// copying them where it can.
//
// A tensor set travels as Arrow record batches with five columns (see
// Columns): each row is a piece of one tensor — its name, PyTorch dtype,
// shape, the byte offset of the piece, and the piece's bytes. Over Flight
// (gRPC) tensors are cut into pieces below the message-size limit; in a
// file each tensor is one row, so its bytes are contiguous.
//
// Files: an Arrow IPC file (format 1.0, metadata V5; arrow.apache.org,
// "Columnar format", IPC file format) written by WriteIPC is laid out so
// that every tensor's bytes start 64-byte aligned, and can be read by
// pyarrow. ParseIPC reads such files, and any other IPC file with the same
// schema (pyarrow's writer included), through a bounds-checked FlatBuffer
// reader of its own: a malformed file is an error, never a panic, and
// tensor bytes are returned as views of the mapping (zero copies).
//
// Source is the read side shared by Arrow IPC files and Hugging Face
// safetensors checkpoints (arrowio/checkpoint): both are memory-mapped and
// their tensors served as byte views.
package tensors
