package data

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compressions that Prepare decompresses while it reads. A compressed input is recognised by
// its magic bytes whatever its name; the format inside is told by the name without the
// compression extension (book.txt.xz is text), else by the decompressed content.
const (
	CompressionGzip  = "gzip"
	CompressionXz    = "xz"
	CompressionZstd  = "zstd"
	CompressionBzip2 = "bzip2"
)

// compressionExts are the extensions of the compressions read.
var compressionExts = map[string]string{
	".gz": CompressionGzip, ".gzip": CompressionGzip,
	".xz":  CompressionXz,
	".zst": CompressionZstd, ".zstd": CompressionZstd,
	".bz2": CompressionBzip2, ".bzip2": CompressionBzip2,
}

// headBytes is how much of a file is read to recognise compressions and archives (a tar
// header's "ustar" magic is at offset 257).
const headBytes = 512

// compressedReadBuffer is the buffer between the file and a decompressor.
const compressedReadBuffer = 256 << 10

// magicCompression tells a supported compression from the first bytes of a file, "" when
// they are none of them.
func magicCompression(head []byte) string {
	switch {
	case len(head) >= 3 && head[0] == 0x1f && head[1] == 0x8b && head[2] == 8: // deflate
		return CompressionGzip
	case bytes.HasPrefix(head, []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}):
		return CompressionXz
	case bytes.HasPrefix(head, []byte{0x28, 0xB5, 0x2F, 0xFD}):
		return CompressionZstd
	case len(head) >= 10 && bytes.HasPrefix(head, []byte("BZh")) && head[3] >= '1' && head[3] <= '9' &&
		(bytes.Equal(head[4:10], []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}) || // a block (digits of pi)
			bytes.Equal(head[4:10], []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90})): // end of stream (sqrt pi)
		return CompressionBzip2
	}
	return ""
}

// compressionExt returns the compression a file name's extension claims, or "".
func compressionExt(path string) string {
	return compressionExts[strings.ToLower(filepath.Ext(path))]
}

// innerName is the file name without a compression extension: the name of what is inside.
func innerName(path string) string {
	if compressionExt(path) != "" {
		return strings.TrimSuffix(path, filepath.Ext(path))
	}
	return path
}

// archive is an archive or compression that dmc does not read, and what to do about it.
type archive struct{ what, todo string }

var (
	archiveZip   = archive{"a zip archive", "unzip it (unzip FILE -d DIR) and pass the folder"}
	archive7z    = archive{"a 7-Zip archive", "extract it (7z x FILE) and pass the folder"}
	archiveRar   = archive{"a RAR archive", "extract it (unrar x FILE) and pass the folder"}
	archiveTar   = archive{"a tar archive", "extract it (tar xf FILE) and pass the folder (folders are read recursively)"}
	archiveLz4   = archive{"lz4-compressed", "decompress it (lz4 -d FILE) or recompress it with xz, gzip or zstd"}
	archiveZ     = archive{"compressed with Unix compress (.Z)", "decompress it (uncompress FILE or gzip -d FILE)"}
	archiveLzma  = archive{"raw LZMA (.lzma)", "decompress it (xz -d --format=lzma FILE) or recompress it with xz"}
	archiveBrotl = archive{"brotli-compressed", "decompress it (brotli -d FILE)"}
)

// archiveExts are the extensions of archives and compressions dmc does not read.
var archiveExts = map[string]archive{
	".zip": archiveZip, ".7z": archive7z, ".rar": archiveRar,
	".tar": archiveTar, ".tgz": archiveTar, ".tbz": archiveTar, ".tbz2": archiveTar, ".txz": archiveTar, ".tzst": archiveTar,
	".lz4": archiveLz4, ".z": archiveZ, ".lzma": archiveLzma, ".br": archiveBrotl,
}

// magicArchive recognises an unsupported archive or compression by its first bytes.
func magicArchive(head []byte) (archive, bool) {
	switch {
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")), bytes.HasPrefix(head, []byte("PK\x07\x08")):
		return archiveZip, true
	case bytes.HasPrefix(head, []byte{'7', 'z', 0xBC, 0xAF, 0x27, 0x1C}):
		return archive7z, true
	case bytes.HasPrefix(head, []byte("Rar!\x1a\x07")):
		return archiveRar, true
	case bytes.HasPrefix(head, []byte{0x04, 0x22, 0x4D, 0x18}):
		return archiveLz4, true
	case bytes.HasPrefix(head, []byte{0x1f, 0x9d}):
		return archiveZ, true
	case len(head) >= 263 && bytes.Equal(head[257:262], []byte("ustar")) && (head[262] == 0 || head[262] == ' ') &&
		bytes.IndexByte(head[:100], 0) >= 0: // the name field of a tar header ends in NULs
		return archiveTar, true
	}
	return archive{}, false
}

// archiveError explains that path is an archive dmc does not read.
func archiveError(path string, a archive, compressed string) error {
	if compressed != "" {
		a.what += " inside " + compressed + " compression"
	}
	return fmt.Errorf("data: %s is %s, which dmc does not read; %s (dmc data prepare reads .gz, .xz, .zst and .bz2 files directly)", path, a.what, a.todo)
}

// readHead returns the first n bytes of a file (fewer when it is shorter).
func readHead(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	head := make([]byte, n)
	k, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("data: reading %s: %w", path, err)
	}
	return head[:k], nil
}

// sniffCompression reads the start of path and returns its compression ("" for none). It
// refuses archives and compressions dmc does not read (by magic bytes or by name), and a
// name that claims a compression the content does not have.
func sniffCompression(path string) (string, error) {
	head, err := readHead(path, headBytes)
	if err != nil {
		return "", err
	}
	if c := magicCompression(head); c != "" {
		return c, nil
	}
	if a, ok := magicArchive(head); ok {
		return "", archiveError(path, a, "")
	}
	ext := strings.ToLower(filepath.Ext(path))
	if a, ok := archiveExts[ext]; ok {
		return "", archiveError(path, a, "")
	}
	if c := compressionExts[ext]; c != "" {
		if len(head) == 0 {
			return "", fmt.Errorf("data: %s is empty, so it is not %s data; remove it or fetch it again", path, c)
		}
		return "", fmt.Errorf("data: %s is named %s but does not hold %s data (it lacks the %s magic bytes): it is damaged or mislabelled; if it is plain text, rename it without %s",
			path, ext, c, c, ext)
	}
	return "", nil
}

// decodeError is a decompressor's error while reading, worded for the user.
type decodeError struct {
	compression string
	err         error
}

func (e *decodeError) Error() string {
	return fmt.Sprintf("the %s data is damaged or truncated: %v (test the file with %s, or fetch it again)", e.compression, e.err, testCommand(e.compression))
}

func (e *decodeError) Unwrap() error { return e.err }

func testCommand(compression string) string {
	switch compression {
	case CompressionGzip:
		return "gzip -t"
	case CompressionXz:
		return "xz -t"
	case CompressionZstd:
		return "zstd -t"
	case CompressionBzip2:
		return "bzip2 -t"
	}
	return "its tool"
}

// countingReader counts the bytes read through it, into n and into total when set.
type countingReader struct {
	r     io.Reader
	n     int64
	total *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.total != nil {
		c.total.Add(int64(n))
	}
	return n, err
}

// decodeReader counts the decompressed bytes and words the decompressor's errors.
type decodeReader struct {
	r           io.Reader
	compression string
	n           int64
}

func (d *decodeReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if err != nil && err != io.EOF {
		err = &decodeError{compression: d.compression, err: err}
	}
	return n, err
}

// inputStream is an open text or JSON lines input: the decompressed bytes when it is
// compressed, the file's otherwise.
type inputStream struct {
	io.Reader
	file    *os.File
	raw     *countingReader // bytes read from the file
	decoded *decodeReader   // nil when not compressed
	closer  io.Closer       // the decompressor's, when it has one
}

// dataBytes is how many bytes of data (decompressed, for a compressed file) were read.
func (s *inputStream) dataBytes() int64 {
	if s.decoded != nil {
		return s.decoded.n
	}
	return s.raw.n
}

func (s *inputStream) Close() error {
	if s.closer != nil {
		s.closer.Close()
	}
	return s.file.Close()
}

// openStream opens path for sequential reading through the decompressor of compression
// ("" for none). Bytes read from the file are added to total when it is set.
func openStream(path, compression string, total *atomic.Int64) (*inputStream, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	s := &inputStream{file: f, raw: &countingReader{r: f, total: total}}
	if compression == "" {
		s.Reader = s.raw
		return s, nil
	}
	br := bufio.NewReaderSize(s.raw, compressedReadBuffer)
	var r io.Reader
	switch compression {
	case CompressionGzip:
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(br); err == nil {
			r, s.closer = zr, zr
		}
	case CompressionXz:
		var xr *xz.Reader
		if xr, err = xz.NewReader(br); err == nil {
			r = xr
		}
	case CompressionZstd:
		var zr *zstd.Decoder
		// One goroutine: the workers that tokenise use the other cores.
		if zr, err = zstd.NewReader(br, zstd.WithDecoderConcurrency(1)); err == nil {
			r, s.closer = zr, zr.IOReadCloser()
		}
	case CompressionBzip2:
		r = bzip2.NewReader(br)
	default:
		err = fmt.Errorf("unknown compression %q", compression)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data: %s: %w", path, &decodeError{compression: compression, err: err})
	}
	s.decoded = &decodeReader{r: r, compression: compression}
	s.Reader = s.decoded
	return s, nil
}

// uncompressedSize decompresses a whole file to count its bytes.
func uncompressedSize(path, compression string) (int64, error) {
	s, err := openStream(path, compression, nil)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n, err := io.Copy(io.Discard, s)
	if err != nil {
		return 0, fmt.Errorf("data: reading %s: %w", path, err)
	}
	return n, nil
}

// compressedFormat tells the format inside a compressed file: the given (forced) format,
// else the one its inner name says (book.txt.xz is text), else the content of its first
// decompressed bytes. Only the last decompresses anything here (an xz reader alone costs
// its dictionary, 64 MiB for xz -9): for text and JSON lines, the readers check the content
// as they go. Parquet, Arrow and tar inside a compression are refused: they cannot be
// streamed (Parquet and Arrow compress their own pages).
func compressedFormat(path, compression, forced string) (string, error) {
	inner := innerName(path)
	if a, ok := archiveExts[strings.ToLower(filepath.Ext(inner))]; ok && a == archiveTar {
		return "", archiveError(path, a, compression)
	}
	notStreamable := func(f string) error {
		name := map[string]string{FormatParquet: "Parquet", FormatArrow: "Arrow"}[f]
		return fmt.Errorf("data: %s is %s data inside %s compression, which cannot be read as a stream; decompress it first (%s compresses its own data, so the outer compression gains little)",
			path, name, compression, name)
	}
	if forced == "" {
		forced = extFormat(inner)
	}
	switch forced {
	case FormatParquet, FormatArrow:
		return "", notStreamable(forced)
	case FormatTxt, FormatJSONL:
		return forced, nil
	}
	s, err := openStream(path, compression, nil)
	if err != nil {
		return "", err
	}
	defer s.Close()
	r := bufio.NewReaderSize(s, sniffBytes)
	head, err := r.Peek(sniffBytes)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("data: reading %s: %w", path, err)
	}
	if a, ok := magicArchive(head); ok {
		return "", archiveError(path, a, compression)
	}
	det, derr := detectBytes(path, head, len(head) < sniffBytes, r)
	var be *BinaryError
	if errors.As(derr, &be) {
		be.Compression = compression
	}
	switch {
	case derr == nil && det == FormatParquet:
		return "", notStreamable(FormatParquet)
	case derr == nil && (det == FormatArrow || det == FormatArrowStream):
		return "", notStreamable(FormatArrow)
	}
	return classifyByContent(path, inner, det, derr)
}
