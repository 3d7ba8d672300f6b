package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Formats of Arrow inputs, as DetectFormat reports them. Prepare reads both (and Hugging
// Face save_to_disk directories) as FormatArrow inputs.
const (
	FormatArrow       = "arrow"        // Arrow IPC file format (starts with "ARROW1")
	FormatArrowStream = "arrow-stream" // Arrow IPC stream format (starts with 0xFFFFFFFF)
)

// sniffBytes is how much of a file DetectFormat reads to tell text from binary data.
const sniffBytes = 64 << 10

// maxSniffLine bounds the first line DetectFormat parses to recognise JSON lines.
const maxSniffLine = 16 << 20

// BinaryError reports that a file given as text is not UTF-8 text: Offset is the first
// offending byte (a NUL or the start of an invalid UTF-8 sequence).
type BinaryError struct {
	Path   string
	Offset int64
	Byte   byte
	// Compression is set when the file is compressed: Offset is then in the decompressed data.
	Compression string
}

func (e *BinaryError) Error() string {
	what := fmt.Sprintf("byte 0x%02x is not valid UTF-8", e.Byte)
	if e.Byte == 0 {
		what = "it holds a NUL byte"
	}
	where := ""
	if e.Compression != "" {
		where = " of the decompressed data"
	}
	hint := "give UTF-8 text (convert it, e.g. with iconv), .jsonl, .parquet or Arrow data"
	if e.Compression == "" {
		ext := strings.ToLower(filepath.Ext(e.Path))
		if compressionExts[ext] != "" {
			hint = "it is compressed: dmc data prepare reads .gz, .xz, .zst and .bz2 files directly; other commands need it decompressed (or prepared) first"
		} else if _, ok := archiveExts[ext]; ok {
			hint = "it looks like an archive or a compression dmc does not read: extract or decompress it first"
		}
	}
	return fmt.Sprintf("data: %s is not text: at byte offset %d%s %s; %s", e.Path, e.Offset, where, what, hint)
}

// DetectFormat tells the format of a data file from its content, whatever its name:
// FormatArrow (Arrow IPC file, "ARROW1" magic), FormatArrowStream (Arrow IPC stream, which
// starts with the continuation marker 0xFFFFFFFF), FormatParquet ("PAR1"), FormatJSONL (the
// first non-space byte is '{' and the first line is valid JSON) or FormatTxt (the first
// 64 KiB are UTF-8 without NUL bytes; readers check the rest as they go). Anything else is a
// *BinaryError naming the file and the first offending byte. An empty file is FormatTxt.
func DetectFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("data: %w", err)
	}
	if st.IsDir() {
		return "", fmt.Errorf("data: %s is a directory, not a data file", path)
	}
	r := bufio.NewReaderSize(f, sniffBytes)
	head, err := r.Peek(sniffBytes)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("data: reading %s: %w", path, err)
	}
	complete := int64(len(head)) == st.Size()
	return detectBytes(path, head, complete, r)
}

// detectBytes classifies head, the first bytes of a file (all of it when complete); rest
// (which may be nil) reads the file from its start, for a first line longer than head.
func detectBytes(path string, head []byte, complete bool, rest io.Reader) (string, error) {
	switch {
	case bytes.HasPrefix(head, arrowFileMagic):
		return FormatArrow, nil
	case bytes.HasPrefix(head, []byte{0xFF, 0xFF, 0xFF, 0xFF}):
		return FormatArrowStream, nil
	case bytes.HasPrefix(head, []byte("PAR1")):
		return FormatParquet, nil
	}
	if off := firstNonText(head, complete); off >= 0 {
		return "", &BinaryError{Path: path, Offset: int64(off), Byte: head[off]}
	}
	trimmed := bytes.TrimLeft(bytes.TrimPrefix(head, utf8BOM), " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '{' {
		line := trimmed
		if i := bytes.IndexByte(trimmed, '\n'); i >= 0 {
			line = trimmed[:i]
		} else if !complete && rest != nil {
			// The first line is longer than head: read it whole (bounded).
			br := bufio.NewReader(io.LimitReader(rest, maxSniffLine))
			full, _ := br.ReadBytes('\n')
			full = bytes.TrimLeft(bytes.TrimPrefix(full, utf8BOM), " \t\r\n")
			line = full
		}
		if json.Valid(bytes.TrimSpace(line)) {
			return FormatJSONL, nil
		}
	}
	return FormatTxt, nil
}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// firstNonText returns the offset of the first NUL byte or invalid UTF-8 sequence in b, or -1.
// When !complete, an incomplete sequence at the very end of b (cut by the read) is allowed.
func firstNonText(b []byte, complete bool) int {
	for i := 0; i < len(b); {
		c := b[i]
		if c == 0 {
			return i
		}
		if c < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			if !complete && len(b)-i < utf8.UTFMax && !utf8.FullRune(b[i:]) {
				return -1
			}
			return i
		}
		i += n
	}
	return -1
}

// extFormat tells the format a file name claims: one of the Format* constants, or "" when
// the extension is not a data format's.
func extFormat(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".txt", ".text", ".raw", ".tokens":
		return FormatTxt
	case ".jsonl", ".ndjson":
		return FormatJSONL
	case ".parquet", ".pq":
		return FormatParquet
	case ".arrow", ".feather", ".ipc":
		return FormatArrow
	}
	return ""
}

// notPlainText are extensions of text-based formats that are not documents one per file or
// per separator; reading them as plain text would train on their markup.
var notPlainText = map[string]string{".csv": "CSV", ".tsv": "TSV", ".json": "JSON", ".xml": "XML"}

// resolveFormat picks the format of an explicitly named input file: content wins for the
// unambiguous binary formats (Arrow, Parquet); otherwise a known extension decides (its
// reader then checks the content), and a name without one is recognised by content.
func resolveFormat(path string) (string, error) {
	det, derr := DetectFormat(path)
	if derr == nil {
		switch det {
		case FormatArrow, FormatArrowStream:
			return FormatArrow, nil
		case FormatParquet:
			return FormatParquet, nil
		}
	}
	ext := extFormat(path)
	var be *BinaryError
	switch {
	case ext == FormatTxt && errors.As(derr, &be):
		return "", derr
	case ext != "":
		return ext, nil
	}
	return classifyByContent(path, path, det, derr)
}

// classifyByContent picks the format of a file whose name (name: for a compressed file, the
// name without the compression extension) does not say, from what DetectFormat found.
func classifyByContent(path, name, det string, derr error) (string, error) {
	var be *BinaryError
	if derr != nil {
		if errors.As(derr, &be) {
			return "", fmt.Errorf("%w (cannot tell the format of %s: it is not Arrow, Parquet, JSON lines or text; pass --format txt|jsonl|parquet|arrow)", derr, path)
		}
		return "", derr
	}
	if kind, ok := notPlainText[strings.ToLower(filepath.Ext(name))]; ok && det != FormatJSONL {
		return "", fmt.Errorf("data: %s is %s (by its extension), which dmc does not read as documents; convert it to .jsonl or .parquet with a text field, or pass the format (--format txt|jsonl|parquet|arrow; txt reads it as plain text)", path, kind)
	}
	return det, nil
}
