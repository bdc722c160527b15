// Package config is npsfused's configuration: one typed struct, loaded
// once at start-up from (in increasing precedence) built-in defaults, a
// YAML file, NPSFUSE_* environment variables and command-line flags, and
// validated completely before anything starts.
//
// Keys (YAML name, environment variable, flag):
//
//	listen          NPSFUSE_LISTEN          --listen          unix:///path.sock (default under the user's runtime dir, mode 0600) or tcp://host:port
//	tokens          NPSFUSE_TOKENS          --token           bearer tokens (comma-separated in the environment); required on TCP
//	data_roots      NPSFUSE_DATA_ROOTS      --data-root       the only directories jobs may read or write
//	store           NPSFUSE_STORE           --store           job store file (bbolt); uploads and results live beside it
//	workers         NPSFUSE_WORKERS         --workers         batch jobs run at once
//	memory_budget   NPSFUSE_MEMORY_BUDGET   --memory-budget   working memory jobs may reserve ("8GiB", "50%" of RAM)
//	metrics_listen  NPSFUSE_METRICS_LISTEN  --metrics-listen  host:port of the HTTP listener for /healthz and /metrics ("" = off)
//
// and the knobs max_message_size, max_upload_size, shm_dir, drain_timeout,
// store_sync, threads, log_level and log_format (see Config).
//
// Data roots are resolved through symbolic links once, at load time; Roots
// checks a path by resolving it the same way (for a path that does not
// exist yet, its nearest existing ancestor), so a link inside a root that
// points outside it is refused.
package config
