package pybind

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/npsfuse/npsfuse/arrowio/stream"
)

// jobs holds the cancel functions of running checkpoint merges by job id.
var jobs = struct {
	sync.Mutex
	cancel map[int]context.CancelFunc
}{cancel: map[int]context.CancelFunc{}}

// checkpointOptions is the JSON form of stream.Options that Python sends.
type checkpointOptions struct {
	OutDir       string `json:"out_dir"`
	ShardSize    int64  `json:"shard_size"`
	Threads      int    `json:"threads"`
	DType        string `json:"dtype"`
	AllowMissing bool   `json:"allow_missing"`
	Force        bool   `json:"force"`
	Progress     bool   `json:"progress"`
}

// MergeCheckpoints merges checkpoints on disk as a mergekit-style config
// (YAML or JSON text) describes, streaming tensor by tensor, and returns
// the stream.Result as JSON. Relative paths in the config are resolved
// against baseDir ("" = the working directory). options is JSON with
// out_dir, shard_size, threads, dtype, allow_missing, force and progress
// (draw a progress line on stderr). jobID names the run for CancelJob.
func MergeCheckpoints(jobID int, config, baseDir, options string) (result string, err error) {
	defer guard(&err)
	var o checkpointOptions
	if err := decodeStrict(stream.ErrConfig, "options", options, &o); err != nil {
		return "", err
	}
	cfg, err := stream.ParseConfig([]byte(config), baseDir)
	if err != nil {
		return "", err
	}
	ctx, done := startJob(jobID)
	defer done()
	opt := stream.Options{OutDir: o.OutDir, ShardSize: o.ShardSize, Threads: o.Threads, DType: o.DType,
		AllowMissing: o.AllowMissing, Force: o.Force}
	if o.Progress {
		opt.Progress = os.Stderr
	}
	opt.OnProgress = stallForTests(ctx, os.Getenv("NPSFUSE_TEST_STALL_AFTER"))
	res, err := stream.Run(ctx, cfg, opt)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(res)
	return string(b), err
}

// stallForTests reads NPSFUSE_TEST_STALL_AFTER=K or K:SECONDS: a merge
// then waits after its K-th output tensor until it is cancelled or SECONDS
// (default 60) have passed, and goes on. The interruption tests set it to
// be inside a merge when their signal lands, on any machine, however fast
// its kernels. Unset, or not of that form, nothing waits.
func stallForTests(ctx context.Context, value string) func(done, total int64) {
	after, secs, timed := strings.Cut(value, ":")
	k, err := strconv.ParseInt(after, 10, 64)
	if err != nil || k <= 0 {
		return nil
	}
	wait := time.Minute
	if timed {
		s, err := strconv.ParseFloat(secs, 64)
		if err != nil || !(s >= 0 && s <= 3600) {
			return nil
		}
		wait = time.Duration(s * float64(time.Second))
	}
	return func(done, _ int64) {
		if done != k {
			return
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// CancelJob stops the checkpoint merge (or MergeJob) with the given id; it reports
// whether such a merge was running. The merge removes its partial output.
func CancelJob(jobID int) bool {
	jobs.Lock()
	defer jobs.Unlock()
	c, ok := jobs.cancel[jobID]
	if ok {
		c()
	}
	return ok
}

// startJob registers a cancellable job under jobID (CancelJob stops it);
// done cancels its context and removes it from the table.
func startJob(jobID int) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancel(context.Background())
	jobs.Lock()
	jobs.cancel[jobID] = cancel
	jobs.Unlock()
	return ctx, func() {
		jobs.Lock()
		delete(jobs.cancel, jobID)
		jobs.Unlock()
		cancel()
	}
}
