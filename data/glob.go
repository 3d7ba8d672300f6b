package data

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// hasGlobMeta reports whether s holds a glob metacharacter (*, ? or [).
func hasGlobMeta(s string) bool { return strings.ContainsAny(s, "*?[") }

// expandGlob returns the regular files that pattern matches, sorted. Each path segment is
// matched with filepath.Match (*, ?, [...]); a segment "**" matches any number of
// directories, zero included ("corpus/**/*.txt.xz"), and as the last segment any file at any
// depth. Hidden files and directories are matched only by a segment that starts with a dot,
// and directories holding a prepared manifest (earlier output) are not entered by "**".
// Directories that a pattern matches are not walked: a pattern selects files.
func expandGlob(pattern string) ([]string, error) {
	segs := strings.Split(filepath.ToSlash(pattern), "/")
	for _, s := range segs {
		if _, err := filepath.Match(s, ""); err != nil {
			return nil, fmt.Errorf("data: bad pattern %q: %v (use *, ?, [...] and ** for any depth)", pattern, err)
		}
	}
	// The literal segments before the first pattern give the directory to start from.
	i := 0
	for i < len(segs) && !hasGlobMeta(segs[i]) {
		i++
	}
	root := strings.Join(segs[:i], "/")
	switch {
	case i == 1 && segs[0] == "": // "/*..."
		root = "/"
	case root == "":
		root = "."
	}
	found := map[string]bool{}
	if err := globMatch(filepath.FromSlash(root), segs[i:], i == 0, found); err != nil {
		return nil, err
	}
	files := make([]string, 0, len(found))
	for f := range found {
		files = append(files, f)
	}
	slices.Sort(files)
	return files, nil
}

// globMatch adds to found the files under dir that segs match. relative: dir is the
// implicit "." of a pattern without a directory, left out of the paths found.
func globMatch(dir string, segs []string, relative bool, found map[string]bool) error {
	join := func(name string) string {
		if relative {
			return name
		}
		return filepath.Join(dir, name)
	}
	if len(segs) == 0 {
		return nil
	}
	seg, rest := segs[0], segs[1:]
	if seg == "" || seg == "." { // "a//b", "a/./b"
		return globMatch(dir, rest, relative, found)
	}
	if !hasGlobMeta(seg) {
		p := join(seg)
		st, err := os.Stat(p)
		if err != nil {
			return nil // no match
		}
		if len(rest) == 0 {
			if st.Mode().IsRegular() {
				found[p] = true
			}
			return nil
		}
		if st.IsDir() {
			return globMatch(p, rest, false, found)
		}
		return nil
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil // no match
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("data: reading %s: %w", dir, err)
	}
	if seg == "**" {
		if err := globMatch(dir, rest, relative, found); err != nil { // zero directories
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := join(e.Name())
			st, err := os.Stat(p) // follows links
			if err != nil {
				continue
			}
			switch {
			case st.IsDir():
				if _, err := os.Stat(filepath.Join(p, ManifestName)); err == nil {
					continue // prepared output, not input
				}
				if err := globMatch(p, segs, false, found); err != nil {
					return err
				}
			case len(rest) == 0 && st.Mode().IsRegular():
				found[p] = true
			}
		}
		return nil
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") && !strings.HasPrefix(seg, ".") {
			continue
		}
		if ok, _ := filepath.Match(seg, name); !ok {
			continue
		}
		p := join(name)
		st, err := os.Stat(p)
		if err != nil {
			continue
		}
		if len(rest) == 0 {
			if st.Mode().IsRegular() {
				found[p] = true
			}
		} else if st.IsDir() {
			if err := globMatch(p, rest, false, found); err != nil {
				return err
			}
		}
	}
	return nil
}
