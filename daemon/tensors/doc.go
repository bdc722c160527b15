// Package tensors moves named tensors in and out of npsfused without
// copying them where it can, in one format: Arrow IPC.
//
// A tensor set is Arrow record batches with five columns (see Columns):
// each row is a piece of one tensor — its name, PyTorch dtype, shape, the
// byte offset of the piece, and the piece's bytes. Over Flight (gRPC) it
// is an IPC stream whose tensors are cut into pieces below the
// message-size limit; at rest (uploads from either transport, results,
// candidates) it is an IPC file with one row per tensor, so each tensor's
// bytes are contiguous and 64-byte aligned, and pyarrow reads it as is.
//
// Writing: WriteIPC (and IPCLayout, UploadWriter) lay a file out from the
// tensors' metadata before any byte is written, so bytes are copied or
// computed straight into place; PieceMessage encodes one piece as a
// stream message with the same layout as a file's batch.
//
// Reading: everything the daemon receives goes through one bounds-checked
// FlatBuffer reader of its own (flatbuf.go): ParseIPC for files (any IPC
// file with the schema, pyarrow's included) and StreamDecoder for Flight
// messages. A malformed file or message is an error wrapping ErrIPC, never
// a panic; nothing is allocated from a length before it is checked against
// the bytes at hand; tensor bytes are returned as views (of the mapping,
// or of the message received), never copied. arrow-go's IPC reader is not
// used: it allocates the buffer lengths a message claims before checking
// them (a 1.5 KiB message claiming 1 TiB ends the process with a fatal
// out-of-memory error) and copies every buffer. FuzzParseIPC and
// FuzzDecodeStream fuzz both paths; daemon/server's FuzzDoPut fuzzes the
// upload handler built on StreamDecoder.
//
// Source is the read side shared by Arrow IPC files and Hugging Face
// safetensors checkpoints (arrowio/checkpoint): both are memory-mapped and
// their tensors served as byte views.
package tensors
