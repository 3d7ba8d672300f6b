package data

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/dmc-project/dmc/internal/atomicfile"
)

// Tokenizer is what this package needs from a tokenizer. The concrete ones live in
// data/tokenizer (tokenizer.Load returns a value that satisfies this interface); keeping the
// interface here lets the data code and its tests run with any implementation.
type Tokenizer interface {
	Encode(text string, addBOS, addEOS bool) []int
	Decode(ids []int) string
	VocabSize() int
	BOS() int
	EOS() int
}

// ManifestFormatVersion is the version of the manifest.json layout written by Prepare.
const ManifestFormatVersion = 1

// ManifestName is the file name of the manifest inside a prepared directory.
const ManifestName = "manifest.json"

// Split names used by Prepare.
const (
	SplitTrain   = "train"
	SplitHeldout = "heldout"
)

// TokenColumn is the name of the token column in prepared shards.
const TokenColumn = "input_ids"

// Manifest describes a directory written by Prepare.
type Manifest struct {
	FormatVersion int              `json:"format_version"`
	Tokenizer     TokenizerInfo    `json:"tokenizer"`
	Format        string           `json:"format"`                // txt, jsonl or parquet
	Separator     string           `json:"separator,omitempty"`   // txt inputs
	TextField     string           `json:"text_field,omitempty"`  // jsonl (and Parquet by --text-field) inputs
	TextColumn    string           `json:"text_column,omitempty"` // Parquet/Arrow inputs: the column read
	AddBOS        bool             `json:"add_bos"`
	AddEOS        bool             `json:"add_eos"`
	SplitRule     SplitRule        `json:"split_rule"`
	Sources       []SourceInfo     `json:"sources"`
	Splits        map[string]Split `json:"splits"`
}

// TokenizerInfo identifies the tokenizer the shards were written with.
type TokenizerInfo struct {
	Path        string `json:"path,omitempty"`
	FileSHA256  string `json:"file_sha256,omitempty"`
	VocabSize   int    `json:"vocab_size"`
	BOS         int    `json:"bos"`
	EOS         int    `json:"eos"`
	Fingerprint string `json:"fingerprint"` // TokenizerFingerprint of the tokenizer
}

// SplitRule records how documents were assigned to train and held-out.
type SplitRule struct {
	// Kind is "fraction" (each document is held out with probability Value, decided by a
	// hash of its index and Seed), "bytes" (documents starting in the first Value of the
	// input bytes, decompressed, are train), "files" (whole input files are held out: the
	// round(Value·n) of the n files, at least one and never all, whose paths relative to
	// the inputs' common directory hash lowest with Seed; each source's split says which)
	// or "none".
	Kind  string  `json:"kind"`
	Value float64 `json:"value"`
	Seed  uint64  `json:"seed,omitempty"`
}

// SourceInfo is one input file.
type SourceInfo struct {
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"` // as stored (compressed, for a compressed file)
	Docs   int64  `json:"docs"`
	Column string `json:"column,omitempty"` // the text column of a Parquet or Arrow input
	// Compression ("gzip", "xz", "zstd" or "bzip2") and the decompressed size of a
	// compressed file.
	Compression       string `json:"compression,omitempty"`
	UncompressedBytes int64  `json:"uncompressed_bytes,omitempty"`
	// Split is where the file's documents went under the "files" split rule.
	Split string `json:"split,omitempty"`
}

// Split is the summary of one split.
type Split struct {
	Docs   int64       `json:"docs"`
	Tokens int64       `json:"tokens"`
	Shards []ShardInfo `json:"shards"`
}

// ShardInfo is one shard file, with its path relative to the manifest directory.
type ShardInfo struct {
	File   string `json:"file"`
	Docs   int64  `json:"docs"`
	Tokens int64  `json:"tokens"`
	Bytes  int64  `json:"bytes"`
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("data: %s: %w (the file is damaged; re-run dmc data prepare)", filepath.Join(dir, ManifestName), err)
	}
	if m.FormatVersion < 1 || m.FormatVersion > ManifestFormatVersion {
		return nil, fmt.Errorf("data: %s has format_version %d; this dmc reads versions 1..%d (re-run dmc data prepare or update dmc)",
			filepath.Join(dir, ManifestName), m.FormatVersion, ManifestFormatVersion)
	}
	return &m, nil
}

// Files lists every file Prepare wrote for this manifest, relative to its directory with
// forward slashes: the shards of every split (in split name order) and manifest.json, last.
// These, and nothing else, are what Prepare with Overwrite removes.
func (m *Manifest) Files() []string {
	var files []string
	for _, name := range slices.Sorted(mapsKeys(m.Splits)) {
		for _, sh := range m.Splits[name].Shards {
			files = append(files, sh.File)
		}
	}
	return append(files, ManifestName)
}

func writeManifest(dir string, m *Manifest) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep "<|endoftext|>" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, ManifestName), buf.Bytes())
}

func writeFileAtomic(path string, b []byte) error { return atomicfile.Write(path, b) }

// TokenizerFingerprint hashes the tokenizer's behaviour (vocabulary size, BOS/EOS and the
// decoding of every id), so the same vocabulary gives the same fingerprint whatever file
// format it was loaded from, and a different vocabulary a different one.
func TokenizerFingerprint(tok Tokenizer) string {
	h := sha256.New()
	var buf [8]byte
	put := func(v int) {
		binary.LittleEndian.PutUint64(buf[:], uint64(int64(v)))
		h.Write(buf[:])
	}
	put(tok.VocabSize())
	put(tok.BOS())
	put(tok.EOS())
	// A pair, because decoders drop a leading space at the start of the text: "▁the" and
	// "the" decode alike alone but not after another token.
	pair := make([]int, 2)
	for i := 0; i < tok.VocabSize(); i++ {
		pair[0], pair[1] = i, i
		s := tok.Decode(pair)
		put(len(s))
		io.WriteString(h, s)
	}
	return "vocab-sha256:" + hex.EncodeToString(h.Sum(nil))[:16]
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
