// Package bridge imports tensors that Python hands to Go through the Arrow C
// Data Interface, without copying them.
//
// Python (pyarrow) exports each tensor as one primitive Arrow array whose
// data buffer is the tensor's own memory, together with an ArrowSchema whose
// field name is the tensor's name. float32 travels as Arrow float32, float16
// as Arrow float16 (or uint16), bfloat16 as uint16 with the field metadata
// "npsfuse.dtype" = "bfloat16". Import validates each array (type, nulls,
// buffers, alignment) and returns tensor.Vec views of the foreign memory, so
// kernels read inputs and write outputs in place. The views are valid until
// Batch.Release, which hands every array back to its producer.
package bridge
