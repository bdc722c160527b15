// Package jobs runs npsfused's jobs: the queue, the workers, the job types
// and the interactive sessions, on top of the persistent store.
//
// Job types:
//
//   - merge: a mergekit-style configuration over checkpoints inside the
//     data roots and uploads; streamed checkpoint to checkpoint into
//     out_dir (arrowio/stream), or computed into a tensor result file
//     (gocore/merge's Merger writing straight into the mapped file);
//   - nps_prune: NPS-Pruning of one fine-tune with fixed subspace weights
//     (gocore/nps), giving θ₀ + λ·τ_NPS or τ_NPS;
//   - compress: NPS compression of several fine-tunes into bit masks and
//     kept values;
//   - nps_search: an interactive session — the daemon decomposes τ once,
//     holds a CMA-ES or DE optimizer (gocore/search) over the subspace
//     weights, and the client asks for candidates and tells their scores;
//   - evolve: an interactive session of weight-space evolution (Evolver's
//     operator or DE/CADE's, optionally "with merger") over a population of
//     fine-tuned models the daemon holds, driven by gocore/evolve.Session,
//     the engine npsfuse.Evolver drives too; its checkpoint is the
//     session's JSON, whose told scores are replayed after a restart (every
//     decision is deterministic) and must give the saved state again, so
//     the population never has to be written out.
//
// Life cycle: Submit validates a spec (cheaply: no tensor data is read)
// and stores the job queued before returning; a worker takes it, marks it
// running and runs it; the result, error or cancellation is stored. A
// session stays running after its setup; Finish writes its result.
// Sessions checkpoint their optimizer after every ask and tell, so after
// a crash the restored optimizer asks the very same candidates.
//
// Recover, at start-up, re-queues everything a previous process left
// queued or running: batch jobs re-run from the start (a merge is
// deterministic and writes its output atomically), sessions resume from
// their last checkpoint; a job interrupted MaxAttempts times is failed.
// Drain stops new work, waits for running jobs up to a deadline and then
// puts the remaining ones back in the queue.
package jobs
