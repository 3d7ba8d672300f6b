package data

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// checkOutDir checks the output directory before any work and returns the files of an
// earlier preparation that the new one replaces (nil when there is none). It refuses a
// prepared directory without overwrite, and a directory that holds files but no manifest
// in any case: those files may not be dmc's, so --force is no licence to remove them.
func checkOutDir(out string, overwrite bool) ([]string, error) {
	st, err := os.Stat(out)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("data: output %s: %w", out, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("data: output %s is a file, not a directory; choose another --out", out)
	}
	if _, err := os.Stat(filepath.Join(out, ManifestName)); err == nil {
		if !overwrite {
			return nil, fmt.Errorf("data: %s already holds prepared data (%s); choose another --out or pass --force to replace it", out, ManifestName)
		}
		m, err := ReadManifest(out)
		if err != nil {
			return nil, fmt.Errorf("%w; --force cannot tell which files the earlier preparation wrote, so it removes nothing: choose another --out, or delete the old data yourself", err)
		}
		files := m.Files()
		for _, f := range files {
			if !filepath.IsLocal(filepath.FromSlash(f)) {
				return nil, fmt.Errorf("data: %s lists %q, which is outside %s; the manifest is not dmc's or was edited: choose another --out, or delete the old data yourself",
					filepath.Join(out, ManifestName), f, out)
			}
		}
		return files, nil
	}
	var found []string
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(out, p)
			found = append(found, filepath.ToSlash(rel))
		}
		if len(found) >= 3 {
			return filepath.SkipAll
		}
		return nil
	})
	if len(found) > 0 {
		return nil, fmt.Errorf("data: %s holds files (%s) but no dmc %s, so it is not a prepared directory (or a run was interrupted before it finished); --force only replaces data dmc prepare wrote, so it will not remove them: choose an empty or new --out, or move those files away yourself",
			out, strings.Join(found, ", "), ManifestName)
	}
	return nil, nil
}

// makeTempSibling creates a hidden temporary directory next to path (on the same file system,
// so that its files can be renamed into path).
func makeTempSibling(path, what string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("data: %w", err)
	}
	parent := filepath.Dir(abs)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("data: creating %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(abs)+".dmc-"+what+"-*")
	if err != nil {
		return "", fmt.Errorf("data: creating a temporary directory next to %s: %w", path, err)
	}
	return tmp, nil
}

// swapIn moves the complete preparation in tmp into out. A new out is tmp renamed. Into an
// existing out, it first moves the old preparation's files (oldFiles) aside into a backup
// next to out, then moves the new files in (the manifest last, so a directory with a
// manifest is always whole), then deletes the backup. On an error it puts everything back.
// Files in out that oldFiles does not list are never touched; a new file that would land on
// one is an error before anything moves.
func swapIn(tmp, out string, oldFiles, newFiles []string) (err error) {
	if _, err := os.Stat(out); errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(tmp, out); err != nil {
			return fmt.Errorf("data: moving the prepared data into %s: %w", out, err)
		}
		return nil
	}
	for _, f := range newFiles {
		if slices.Contains(oldFiles, f) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(out, filepath.FromSlash(f))); err == nil {
			return fmt.Errorf("data: %s already exists and the old manifest does not list it, so it is not replaced; move it away and run again (the new data was not kept)",
				filepath.Join(out, filepath.FromSlash(f)))
		}
	}
	backup, err := makeTempSibling(out, "old")
	if err != nil {
		return err
	}
	type move struct{ from, to string }
	var done []move
	rename := func(from, to string) error {
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := os.Rename(from, to); err != nil {
			return err
		}
		done = append(done, move{from, to})
		return nil
	}
	defer func() {
		if err != nil { // undo in reverse order
			for i := len(done) - 1; i >= 0; i-- {
				os.Rename(done[i].to, done[i].from)
			}
			if len(done) > 0 {
				removeEmptyDirs(out, newFiles)
			}
		}
		os.RemoveAll(backup)
	}()
	// The old manifest first: from here until the new one is in, out is not "prepared".
	for i := len(oldFiles) - 1; i >= 0; i-- {
		f := filepath.FromSlash(oldFiles[i])
		if _, serr := os.Lstat(filepath.Join(out, f)); serr != nil {
			continue // listed but already gone
		}
		if err = rename(filepath.Join(out, f), filepath.Join(backup, f)); err != nil {
			return fmt.Errorf("data: moving the old %s aside: %w", f, err)
		}
	}
	for _, nf := range newFiles { // the manifest is last in newFiles
		f := filepath.FromSlash(nf)
		if err = rename(filepath.Join(tmp, f), filepath.Join(out, f)); err != nil {
			return fmt.Errorf("data: moving the new %s into %s: %w", f, out, err)
		}
	}
	var stale []string
	for _, f := range oldFiles {
		if !slices.Contains(newFiles, f) {
			stale = append(stale, f)
		}
	}
	removeEmptyDirs(out, stale)
	return nil
}

// removeEmptyDirs removes the directories of files (inside out) that are now empty.
func removeEmptyDirs(out string, files []string) {
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(filepath.FromSlash(f)); d != "." && d != string(filepath.Separator); d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	keys := make([]string, 0, len(dirs))
	for d := range dirs {
		keys = append(keys, d)
	}
	slices.SortFunc(keys, func(a, b string) int { return len(b) - len(a) }) // deepest first
	for _, d := range keys {
		os.Remove(filepath.Join(out, d)) // fails, harmlessly, when not empty
	}
}
