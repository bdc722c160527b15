package jobs

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// Error kinds; the server maps them to gRPC status codes.
var (
	// ErrInvalid marks a bad request (unknown job type, bad spec).
	ErrInvalid = fault.New(fault.InvalidInput, "invalid request")
	// ErrDraining marks a request refused because the daemon is shutting down.
	ErrDraining = fault.New(fault.Unavailable, "npsfused is shutting down")
	// ErrTooLarge marks a job or upload over a configured limit.
	ErrTooLarge = fault.New(fault.ResourceExhausted, "request too large")
	// ErrUnsupported marks a job type this build cannot run.
	ErrUnsupported = fault.New(fault.Unimplemented, "not supported")
	// ErrState marks a call that does not fit the job's state (ask on a
	// finished session, result of a running job, ...).
	ErrState = fault.New(fault.FailedPrecondition, "wrong job state")
	// ErrNoUpload marks a reference to an upload that does not exist.
	ErrNoUpload = fault.New(fault.NotFound, "no such upload")
)

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}

// Env is what jobs may touch: the data roots, the daemon's own folders and
// the metrics hooks.
type Env struct {
	// Roots are the data roots, the shared-memory folder included.
	Roots config.Roots
	// Uploads holds uploads received over Flight (name.arrow).
	Uploads string
	// Results holds tensor results written for Flight clients.
	Results string
	// ShmDir is the shared-memory folder ("" = none): uploads in
	// ShmDir/uploads (name.arrow), results in ShmDir/results.
	ShmDir string
	// Store is the job store file (outputs may not replace it or its folder).
	Store string
	// Durable makes result files fsynced before a job is done.
	Durable bool
	// Log receives the runner's structured log.
	Log *slog.Logger
	// KernelSeconds is called with each job's run time (may be nil).
	KernelSeconds func(jobType string, seconds float64)
	// BytesIn and BytesOut count tensor bytes read from and written to
	// clients' shared-memory files (may be nil).
	BytesIn, BytesOut func(transport string, n int64)
	// Pool is the kernels' thread count (the config's threads; zero value:
	// all cores), passed with every kernel call.
	Pool parallel.Pool
	// Python is the interpreter (with npsfuse installed) that prepares
	// merge configs naming Hub ids, MODEL+LORA or tokenizer keys
	// (npsfuse._prepare); "" refuses such configs.
	Python string
	// Scratch holds the jobs' scratch folders (job-ID), removed when a job
	// ends and at start; "" means "scratch" beside Uploads.
	Scratch string

	slabs slabPool // kept mappings of recycled shared-memory results
}

// Prepare creates the daemon's folders (mode 0700) and removes the
// scratch folders a previous process left (a crash interrupts a job
// before it removes its own).
func (e *Env) Prepare() error {
	dirs := []string{e.Uploads, e.Results}
	if r := e.scratchRoot(); r != "" {
		dirs = append(dirs, r)
		e.SweepScratch()
	}
	if e.ShmDir != "" {
		dirs = append(dirs, e.ShmDir, filepath.Join(e.ShmDir, "uploads"), filepath.Join(e.ShmDir, "results"), e.ShmFreeDir())
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}

var uploadName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckUploadName validates an upload name: 1–128 of [A-Za-z0-9._-],
// starting with a letter or digit.
func CheckUploadName(name string) error {
	if !uploadName.MatchString(name) || strings.Contains(name, "..") {
		return invalid("upload name %q: use 1–128 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// UploadRef is the prefix that names an upload inside a job spec.
const UploadRef = "upload:"

// FlightUploadPath is where an upload received over Flight is stored.
func (e *Env) FlightUploadPath(name string) string {
	return filepath.Join(e.Uploads, name+".arrow")
}

// ShmUploadPath is where a same-host client puts an upload (name.arrow).
func (e *Env) ShmUploadPath(name string) string {
	if e.ShmDir == "" {
		return ""
	}
	return filepath.Join(e.ShmDir, "uploads", name+".arrow")
}

// ShmFreeDir holds recycled shared-memory upload files ("slabs"): a
// client that keeps a slab mapped writes its next upload into the same
// pages, which costs a copy instead of fresh page allocation.
func (e *Env) ShmFreeDir() string {
	if e.ShmDir == "" {
		return ""
	}
	return filepath.Join(e.ShmDir, "free")
}

// RecycleUpload moves a shared-memory upload to ShmFreeDir()/slab.arrow
// (its client reuses it); an upload received over Flight is deleted.
func (e *Env) RecycleUpload(name, slab string) error {
	if err := CheckUploadName(slab); err != nil {
		return err
	}
	p, err := e.UploadPath(name)
	if err != nil {
		return err
	}
	if p != e.ShmUploadPath(name) {
		return os.Remove(p)
	}
	dst := filepath.Join(e.ShmFreeDir(), slab+".arrow")
	if err := os.Rename(p, dst); err != nil {
		return err
	}
	now := time.Now()
	return os.Chtimes(dst, now, now)
}

// CollectSlabs deletes recycled slabs unused for longer than age (their
// client went away); it returns how many it deleted.
func (e *Env) CollectSlabs(age time.Duration) int {
	if e.ShmDir == "" {
		return 0
	}
	entries, _ := os.ReadDir(e.ShmFreeDir())
	n := 0
	for _, ent := range entries {
		info, err := ent.Info()
		p := filepath.Join(e.ShmFreeDir(), ent.Name())
		if err == nil && time.Since(info.ModTime()) > age && os.Remove(p) == nil {
			e.slabs.forget(p)
			n++
		}
	}
	e.slabs.sweep()
	return n
}

// UploadPath returns the file of an existing upload (Flight first, then
// shared memory), or an error wrapping ErrNoUpload.
func (e *Env) UploadPath(name string) (string, error) {
	if err := CheckUploadName(name); err != nil {
		return "", err
	}
	for _, p := range []string{e.FlightUploadPath(name), e.ShmUploadPath(name)} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %q (upload it first, or it was deleted after its job finished)", ErrNoUpload, name)
}

// UploadExists reports whether an upload of that name exists.
func (e *Env) UploadExists(name string) bool {
	_, err := e.UploadPath(name)
	return err == nil
}

// DeleteUpload removes an upload (both places); a missing one is an error.
func (e *Env) DeleteUpload(name string) error {
	p, err := e.UploadPath(name)
	if err != nil {
		return err
	}
	return os.Remove(p)
}

// Resolve turns a reference from a spec into a path to read: "upload:NAME"
// or an absolute path inside the data roots.
func (e *Env) Resolve(ref, what string) (string, error) {
	return e.resolveIn(e.Roots, ref, what)
}

// resolveIn is Resolve with the given roots (the data roots, or those and
// a job's scratch folder for a config npsfuse._prepare prepared).
func (e *Env) resolveIn(roots config.Roots, ref, what string) (string, error) {
	if name, ok := strings.CutPrefix(ref, UploadRef); ok {
		p, err := e.UploadPath(name)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		return p, nil
	}
	if ref == "" {
		return "", invalid("%s is missing", what)
	}
	if !filepath.IsAbs(ref) {
		return "", invalid("%s %q must be an absolute path (the daemon has no working directory of yours) or upload:NAME", what, ref)
	}
	p, err := roots.Check(ref)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if _, err := os.Stat(p); err != nil {
		return "", invalid("%s %s does not exist", what, ref)
	}
	if err := checkInputFiles(roots, p, what); err != nil {
		return "", err
	}
	return p, nil
}

// RecycleRef is the cleanup entry prefix "recycle:NAME:SLAB": when the job
// ends, upload NAME is moved to the free slab SLAB instead of deleted.
const RecycleRef = "recycle:"

// CheckCleanup validates a spec's cleanup list: uploads (upload:NAME, or
// recycle:NAME:SLAB), or files inside the shared-memory folder (nothing
// else may be deleted by a job).
func (e *Env) CheckCleanup(list []string) error {
	for _, c := range list {
		if name, ok := strings.CutPrefix(c, UploadRef); ok {
			if err := CheckUploadName(name); err != nil {
				return err
			}
			continue
		}
		if rest, ok := strings.CutPrefix(c, RecycleRef); ok {
			name, slab, _ := strings.Cut(rest, ":")
			if err := CheckUploadName(name); err != nil {
				return err
			}
			if err := CheckUploadName(slab); err != nil {
				return err
			}
			continue
		}
		if e.ShmDir == "" || !filepath.IsAbs(c) || !within(filepath.Clean(c), e.ShmDir) {
			return invalid("cleanup entry %q: only upload:NAME or files in the shared-memory folder %s", c, e.ShmDir)
		}
	}
	return nil
}

// Cleanup deletes the entries of a validated cleanup list, ignoring those
// already gone.
func (e *Env) Cleanup(list []string) {
	for _, c := range list {
		var err error
		if name, ok := strings.CutPrefix(c, UploadRef); ok {
			err = e.DeleteUpload(name)
		} else if rest, ok := strings.CutPrefix(c, RecycleRef); ok {
			name, slab, _ := strings.Cut(rest, ":")
			err = e.RecycleUpload(name, slab)
		} else if within(filepath.Clean(c), e.ShmDir) {
			err = os.Remove(c)
		}
		if err != nil && !errors.Is(err, ErrNoUpload) && !errors.Is(err, fs.ErrNotExist) {
			e.Log.Warn("cleanup failed", "entry", c, "error", err)
		}
	}
}

func within(p, dir string) bool {
	return dir != "" && (p == dir || strings.HasPrefix(p, dir+string(filepath.Separator)))
}

// OutputPath checks an output folder or file requested by a spec: absolute,
// inside the data roots, and neither a data root nor a folder holding one,
// nor inside or above the daemon's own folders (shared memory, uploads,
// results, the job store): a merge with force replaces its whole out_dir.
func (e *Env) OutputPath(p, what string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", invalid("%s %q must be an absolute path", what, p)
	}
	r, err := e.Roots.Check(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if err := e.checkOutputPlace(r, p, what); err != nil {
		return "", err
	}
	return r, nil
}

// ResultPath is where job id's tensor result goes: the shared-memory
// folder for same-host clients that asked for it, the results folder
// otherwise.
func (e *Env) ResultPath(id uint64, attempt int, shm bool) (string, error) {
	if shm {
		if e.ShmDir == "" {
			return "", invalid("result.shm: the shared-memory path is disabled on this daemon (shm_dir is empty)")
		}
		return filepath.Join(e.ShmDir, "results", fmt.Sprintf("job-%d-%d.arrow", id, attempt)), nil
	}
	return filepath.Join(e.Results, fmt.Sprintf("job-%d.arrow", id)), nil
}

// RemoveResult deletes a result file the daemon wrote (and nothing else).
func (e *Env) RemoveResult(p string) error {
	c := filepath.Clean(p)
	if !within(c, e.Results) && !within(c, filepath.Join(e.ShmDir, "results")) {
		return fmt.Errorf("refusing to delete %s: not a result file", p)
	}
	err := os.Remove(c)
	e.slabs.forget(c)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// openRef opens the tensor source a spec's reference names (Resolve,
// openSource).
func (e *Env) openRef(ref, what string) (tensors.Source, error) {
	p, err := e.Resolve(ref, what)
	if err != nil {
		return nil, err
	}
	return e.openSource(p)
}

// openSource opens a tensor source and counts shared-memory bytes in.
func (e *Env) openSource(path string) (tensors.Source, error) {
	s, err := tensors.Open(path)
	if err != nil {
		return nil, err
	}
	if e.BytesIn != nil && within(path, e.ShmDir) {
		var n int64
		for _, m := range sourceMetas(s) {
			n += m.Bytes()
		}
		e.BytesIn("shm", n)
	}
	return s, nil
}
