// Package tensor holds the flat, typed views over tensor memory that every
// npsfuse kernel reads and writes.
//
// A Vec never owns its memory: it views a buffer that Python, a memory-mapped
// safetensors file or a Go allocation provides. Kernels work on float32;
// float16 and bfloat16 storage is widened on load and rounded to nearest-even
// on store, a chunk at a time, so no kernel ever materialises a float32 copy
// of a whole half-precision tensor.
package tensor
