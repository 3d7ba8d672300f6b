package trainer

import (
	"io"
	"io/fs"
	"os"
)

// FS is the small slice of a filesystem that checkpointing needs. OSFS is the real one; tests
// wrap it to inject faults (a full disk, a failing rename) and check that the previous
// checkpoint survives.
type FS interface {
	MkdirAll(path string) error
	Create(path string) (WriteFile, error) // create or truncate, for writing
	Open(path string) (io.ReadCloser, error)
	ReadDir(path string) ([]fs.DirEntry, error)
	Stat(path string) (fs.FileInfo, error)
	Rename(oldpath, newpath string) error
	RemoveAll(path string) error
	SyncDir(path string) error // make renames and creations in a directory durable
}

// WriteFile is a file open for writing.
type WriteFile interface {
	io.Writer
	Sync() error
	Close() error
}

// OSFS is FS on the operating system's filesystem.
type OSFS struct{}

func (OSFS) MkdirAll(path string) error                 { return os.MkdirAll(path, 0o755) }
func (OSFS) Create(path string) (WriteFile, error)      { return os.Create(path) }
func (OSFS) Open(path string) (io.ReadCloser, error)    { return os.Open(path) }
func (OSFS) ReadDir(path string) ([]fs.DirEntry, error) { return os.ReadDir(path) }
func (OSFS) Stat(path string) (fs.FileInfo, error)      { return os.Stat(path) }
func (OSFS) Rename(oldpath, newpath string) error       { return os.Rename(oldpath, newpath) }
func (OSFS) RemoveAll(path string) error                { return os.RemoveAll(path) }

func (OSFS) SyncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func readAll(fsys FS, path string) ([]byte, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
