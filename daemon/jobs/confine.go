package jobs

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/arrowio/stream"
	"github.com/npsfuse/npsfuse/daemon/config"
)

// checkInputFiles checks the files a job reads for the input at p (a
// checkpoint folder or file already inside the data roots; see
// stream.InputFiles: weights, index, config.json, tokenizer files, which
// a merge also copies into its output): each must resolve, through its
// symbolic links, to a regular file inside the data roots. A link that
// leads out of the roots is refused (PERMISSION_DENIED), and so is a FIFO,
// socket or device (INVALID_ARGUMENT), which would block a worker in open.
func checkInputFiles(roots config.Roots, p, what string) error {
	files, err := stream.InputFiles(p)
	if err != nil {
		return invalid("%s %s: %v", what, p, err)
	}
	for i, f := range files {
		resolved, err := filepath.EvalSymlinks(f)
		if err != nil {
			return invalid("%s: %s cannot be resolved (a dangling link?): %v", what, f, err)
		}
		if _, err := roots.Check(resolved); err != nil {
			return fmt.Errorf("%s: %s is a link to %s: %w", what, f, resolved, err)
		}
		st, err := os.Stat(resolved)
		if err != nil {
			return invalid("%s: %s: %v", what, f, err)
		}
		if i == 0 && st.IsDir() {
			continue // the checkpoint folder itself
		}
		if !st.Mode().IsRegular() {
			return invalid("%s: %s is %s, not a regular file (inputs must be regular files)", what, f, safetensors.FileKind(st.Mode()))
		}
	}
	return nil
}

// checkOutputPlace refuses an output (resolved r, as requested p) that is
// a data root or holds one, or that lies inside or above one of the
// daemon's own folders: replacing it (force, or a commit over an empty
// folder) would delete the root, pending uploads, results or the job
// store.
func (e *Env) checkOutputPlace(r, p, what string) error {
	for _, d := range e.Roots.Dirs() {
		if r == d {
			return invalid("%s %s is the data root %s itself: a merge replaces its out_dir as a whole; name a new folder inside the root", what, p, d)
		}
		if within(d, r) {
			return invalid("%s %s holds the data root %s: a merge replaces its out_dir as a whole; name a new folder inside a root", what, p, d)
		}
	}
	for _, d := range e.ownFolders() {
		if within(r, d) || within(d, r) {
			return invalid("%s %s is inside or above the daemon's own folder %s (shared memory, uploads, results, job scratch or job store): name a folder inside a data root", what, p, d)
		}
	}
	return nil
}

// ownFolders are the daemon's folders (the jobs' scratch folder
// included) and store file, resolved through links where they exist.
func (e *Env) ownFolders() []string {
	var out []string
	for _, d := range []string{e.ShmDir, e.Uploads, e.Results, e.Store, e.scratchRoot()} {
		if d == "" {
			continue
		}
		if r, err := filepath.EvalSymlinks(d); err == nil {
			d = r
		}
		out = append(out, filepath.Clean(d))
	}
	return out
}
