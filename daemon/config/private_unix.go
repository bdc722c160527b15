//go:build unix

package config

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// CheckPrivateDir refuses a folder that another local user could have
// prepared or could still change. dir (an existing folder, symlinks
// resolved by the caller) and every ancestor must belong to the daemon's
// user or root, and one that others may write needs the sticky bit (as
// /tmp and /dev/shm have): otherwise its owner could swap in a folder or
// socket of their own. With private, dir itself must belong to the
// daemon's user and must never have been writable by group or others; it
// is then closed to their reading too (chmod go-rwx: shm_dir holds
// uploads and results).
//
// what names the folder in the error ("shm_dir", "the socket's folder").
func CheckPrivateDir(dir, what string, private bool) error {
	uid := uint32(os.Geteuid())
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a folder", what, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	mode := fi.Mode().Perm()
	if private {
		if st.Uid != uid {
			return fmt.Errorf("%s %s belongs to user %d, not to the daemon's user %d: another user may have made it to swap in their own files; remove it or choose a folder of your own", what, dir, st.Uid, uid)
		}
		if mode&0o022 != 0 {
			return fmt.Errorf("%s %s has mode %04o: other users may have put files or links there; remove it, or empty it and chmod 700 %s", what, dir, mode, dir)
		}
		if mode&0o077 != 0 {
			// Only its owner could write it: closing it to readers is safe.
			if err := os.Chmod(dir, mode&^0o077); err != nil {
				return fmt.Errorf("%s %s: closing it to other users: %w", what, dir, err)
			}
		}
	} else if err := checkAncestor(dir, uid, what, dir); err != nil {
		return err
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if err := checkAncestor(p, uid, what, dir); err != nil {
			return err
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// checkAncestor refuses an ancestor p of dir that a user other than uid
// and root could use to replace dir.
func checkAncestor(p string, uid uint32, what, dir string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	where := fmt.Sprintf("%s %s lies inside %s, which", what, dir, p)
	if p == dir {
		where = fmt.Sprintf("%s %s", what, dir)
	}
	if st.Uid != uid && st.Uid != 0 {
		return fmt.Errorf("%s belongs to user %d: that user could replace what the daemon puts there; choose a folder of your own", where, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("%s has mode %04o: other users may write it and it has no sticky bit, so they could replace what the daemon puts there; choose a folder of your own", where, fi.Mode().Perm())
	}
	return nil
}
