// Package stream merges checkpoints that need not fit in memory: it reads a
// mergekit-style configuration, maps the base and fine-tuned checkpoints,
// and produces the merged checkpoint tensor by tensor.
//
// The pipeline per output tensor is read → merge → write: the kernel is
// asked to prefetch the next tensors' pages (reads ahead), the merge runs on
// all cores (gocore/merge's Merger), and a writer goroutine stores finished
// tensors into their shard while the next one is merged (writes behind).
// Merged input pages are dropped from the process's resident set, so peak
// memory is a small multiple of the largest tensor, not of the model. With
// scope global, the engine first ranks every tensor (one extra read pass).
// Everything is written into a temporary folder beside the destination and
// renamed into place at the end.
package stream
