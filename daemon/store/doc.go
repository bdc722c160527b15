// Package store is npsfused's persistent job store: one bbolt file
// holding every submitted job, its state, progress checkpoints and
// result, so that a job submitted once is never lost or run twice.
//
// # States
//
//	queued ──► running ──► done | failed | cancelled
//	  │           │
//	  │           └──► queued   (interrupted: drain or crash, to resume)
//	  └──► cancelled | failed
//
// done, failed and cancelled are final: nothing leaves them.
//
// # Durability
//
// Submit returns only after the job is committed (and, with sync on,
// fsynced). Writes from many goroutines are group-committed: one writer
// goroutine takes every pending write, applies them in one transaction
// and syncs once, so n concurrent submits cost about one fsync, and a
// lone submit waits for exactly one (no batching delay). SubmitMany
// stores a batch of jobs in one transaction: one commit for all of them,
// or none on error.
//
// # Idempotency
//
// A job may carry an idempotency key. Submitting again with the same key
// and the same request returns the stored job instead of a new one; the
// same key with a different request is refused (ErrKeyReused).
package store
