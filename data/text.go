package data

import (
	"fmt"
	"io"
)

// TextFiles expands inputs (files, directories, quoted glob patterns) as Prepare does and
// returns the plain-text files among them, in the same order, for readers of raw text such as
// the tokenizer trainer. JSON lines, Parquet and Arrow inputs are refused: their text is in a
// field or column.
func TextFiles(inputs []string) ([]string, error) {
	in, err := expandInputs(inputs, "")
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(in))
	for _, f := range in {
		if f.format != FormatTxt {
			return nil, fmt.Errorf("data: %s is %s, not plain text: pass .txt files (compressed or not)", f.path, f.format)
		}
		out = append(out, f.path)
	}
	return out, nil
}

// OpenText opens a text file for reading, through its decompressor when it is gzip, xz, zstd
// or bzip2 (by its magic bytes), with the errors Prepare gives for damaged or unsupported files.
func OpenText(path string) (io.ReadCloser, error) {
	c, err := sniffCompression(path)
	if err != nil {
		return nil, err
	}
	return openStream(path, c, nil)
}
