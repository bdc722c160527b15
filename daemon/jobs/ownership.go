package jobs

import (
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// fileKey identifies a file: its device and inode numbers.
type fileKey struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// keyOf is fi's identity (ok false where the platform does not report it).
func keyOf(fi os.FileInfo) (fileKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Ino == 0 {
		return fileKey{}, false
	}
	// Dev's and Ino's types differ between platforms.
	return fileKey{Dev: uint64(st.Dev), Ino: uint64(st.Ino)}, true
}

// outputMark is a stream merge's job checkpoint: the temporary folder its
// attempt writes into (arrowio/checkpoint.NewOutput makes it beside
// out_dir, named ".<name>.npsfuse-tmp-*") and that folder's identity,
// which out_dir keeps once the attempt commits (the commit is a rename),
// plus the identity of an out_dir an earlier attempt committed. A retry
// after a crash removes and replaces only what these identify as the
// job's own.
type outputMark struct {
	Tmp  string   `json:"out_tmp"`
	Key  fileKey  `json:"out_key"`
	Prev *fileKey `json:"out_prev,omitempty"`
}

// markOutput records tmp, the folder this attempt writes its output into,
// in the job's checkpoint before anything is written into it (prev: an
// out_dir an earlier attempt committed, or nil).
func markOutput(rc *runCtx, tmp string, prev *fileKey) error {
	fi, err := os.Stat(tmp)
	if err != nil {
		return err
	}
	m := outputMark{Tmp: tmp, Prev: prev}
	m.Key, _ = keyOf(fi)
	return rc.checkpoint(m)
}

// resumeOutput is how a job's attempt may write into out (force: the
// spec's): an earlier attempt may have left its temporary folder, or even
// committed the output just before the crash. Only what that attempt
// recorded as its own is removed or replaced (recoverOutput): out is
// replaced without force only if it is the folder the attempt committed
// (prev, the same inode), never a folder the user made.
func resumeOutput(rc *runCtx, out string, force bool) (bool, *fileKey) {
	if rc.job.Attempts > 1 {
		if prev := recoverOutput(rc.log, out, rc.job.Checkpoint); prev != nil {
			return true, prev
		}
	}
	return force, nil
}

// recoverOutput cleans up after an earlier attempt of a stream merge into
// out that a crash interrupted, from the mark it left (raw, the job's
// checkpoint): its temporary folder is removed, and a commit interrupted
// between moving the old out_dir aside and renaming the new one in is
// undone (the old folder is put back). It returns out's identity when out
// is a folder an earlier attempt committed, which the retry may then
// replace, and nil otherwise. With no mark nothing is touched.
func recoverOutput(log *slog.Logger, out string, raw json.RawMessage) *fileKey {
	var m outputMark
	if len(raw) == 0 || json.Unmarshal(raw, &m) != nil || m.Tmp == "" {
		return nil
	}
	// Only a temporary folder of out's own name pattern is ever removed.
	prefix := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".npsfuse-tmp-")
	if !strings.HasPrefix(m.Tmp, prefix) || strings.ContainsRune(m.Tmp[len(prefix):], filepath.Separator) {
		log.Warn("ignoring a merge checkpoint that names a foreign folder", "tmp", m.Tmp, "out_dir", out)
		return nil
	}
	old := m.Tmp + ".old" // checkpoint.Output.Commit's name for the folder it replaces
	remove := func(p string) {
		if err := os.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("cannot remove an interrupted merge's folder", "path", p, "error", err)
		}
	}
	fi, err := os.Stat(out)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Lstat(old); err == nil {
			if err := os.Rename(old, out); err != nil {
				log.Warn("cannot restore the folder an interrupted merge moved aside", "path", old, "out_dir", out, "error", err)
			}
		}
		remove(m.Tmp)
		return nil
	}
	remove(m.Tmp)
	if err != nil {
		return nil
	}
	k, ok := keyOf(fi)
	if !ok || (k != m.Key && (m.Prev == nil || k != *m.Prev)) {
		return nil
	}
	if k == m.Key {
		remove(old) // the folder the committed output replaced (empty, or forced)
	}
	return &k
}
