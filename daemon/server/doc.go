// Package server is npsfused's process: it wires the job store, the
// runner, the Arrow Flight service (gRPC, bearer-token auth on every call,
// raised and bounded message sizes) and the HTTP listener for /healthz and
// /metrics, and owns their shutdown.
//
// Start-up: folders and the store are opened, jobs a previous process
// left behind are recovered, the metrics listener starts, then the Flight
// listener; a log line "npsfused ready" carries both addresses.
//
// Shutdown (SIGTERM, SIGINT, or the context ending): health turns to 503
// and new jobs and uploads are refused with UNAVAILABLE; running jobs get
// drain_timeout to finish, after which they are stopped and put back in
// the queue (resumed at the next start); sessions keep their last
// checkpoint; in-flight calls end, the store is closed, the socket
// removed, and Run returns nil (exit status 0).
package server
