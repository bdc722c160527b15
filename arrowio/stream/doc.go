// Package stream merges checkpoints that need not fit in memory: it reads a
// mergekit-style configuration, maps the base and fine-tuned checkpoints,
// and produces the merged checkpoint tensor by tensor.
//
// The pipeline per output tensor is read → merge → write. In a merge whose
// inputs exceed half the memory, the inputs that are mostly not in the
// page cache, of tensors a Merger merges one at a time, are read by the
// direct reader (direct.go): O_DIRECT reads, in tensor order ahead of the
// merge, into one ring of memory reused from tensor to tensor, merged with
// Merger.TensorFrom. For the other inputs a prefetcher
// goroutine asks the kernel for the inputs of the tensors ahead, in order,
// in 2 MB pieces (madvise WILLNEED queues the reads without waiting, so the
// disk sees many large requests at once), up to a window of input bytes
// beyond the tensor being merged (Options.ReadAhead, 512 MiB by default;
// these pages sit in the page cache, not in the resident set). The merge
// loop maps the tensor's input pages (waiting for any still being read),
// merges on all cores (gocore/merge's Merger: for a per-tensor top-k, its
// ranking pass and merge pass both run over the pages mapped once), drops
// the pages from the resident set, and hands the result to a writer
// goroutine that stores it into its shard while the next one is merged
// (writes behind). Peak memory is a small multiple of the largest tensor,
// not of the model. With scope global, the engine first ranks every tensor
// (one extra read pass). The data-aware methods (fisher, regmean) also map
// each model's statistics file and read a tensor's statistics like its
// inputs (Config.EngineParams). Result.Timing tells where the time went.
// Everything is written into a temporary folder beside the destination and
// renamed into place at the end.
package stream
