package tokenizer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Tokenizer converts text to token ids and back.
//
// Implementations are safe for concurrent use: Encode, Decode and Piece only read the
// loaded vocabulary.
type Tokenizer interface {
	// Encode splits text into token ids, optionally framed by BOS and EOS.
	Encode(text string, addBOS, addEOS bool) []int
	// Decode joins the text of ids: BOS, EOS and other control tokens produce nothing,
	// byte-fallback tokens <0xNN> produce their raw byte, and the space the encoder's
	// dummy prefix put in front of the text is removed once at the start. Ids outside
	// the vocabulary decode to U+FFFD.
	Decode(ids []int) string
	// Piece is the text of one token for streaming output (llama2.c style): the leading
	// space of a token that follows BOS is dropped and <0xNN> becomes the raw byte.
	Piece(prev, id int) string
	VocabSize() int
	BOS() int
	EOS() int
}

// Format names a tokenizer file format.
type Format int

const (
	// FormatAuto picks the format from the file content.
	FormatAuto Format = iota
	// FormatSentencePiece is a SentencePiece ModelProto (tokenizer.model).
	FormatSentencePiece
	// FormatLlama2C is the llama2.c tokenizer.bin layout.
	FormatLlama2C
)

func (f Format) String() string {
	switch f {
	case FormatSentencePiece:
		return "SentencePiece .model"
	case FormatLlama2C:
		return "llama2.c tokenizer.bin"
	}
	return "auto"
}

// maxFileSize bounds what Load reads: real tokenizer files are a few MB, so anything far
// larger is almost certainly a model file passed by mistake.
const maxFileSize = 64 << 20

// maxPieceBytes bounds the length of one vocabulary entry (real ones are under 64 bytes):
// building the merge table costs the square of a piece's length.
const maxPieceBytes = 1024

// Load reads a tokenizer file. A ".model" extension means SentencePiece and ".bin" means
// llama2.c; any other name is recognised by content.
func Load(path string) (Tokenizer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("tokenizer: %s is a directory; pass a tokenizer file (tokenizer.model or tokenizer.bin) or locate one with Find", path)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("tokenizer: %s is %d bytes, larger than any tokenizer (limit %d); is it a model file?", path, fi.Size(), maxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	format := FormatAuto
	switch strings.ToLower(filepath.Ext(path)) {
	case ".model":
		format = FormatSentencePiece
	case ".bin":
		format = FormatLlama2C
	}
	tok, err := Parse(data, format)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	return tok, nil
}

// Parse builds a tokenizer from the bytes of a tokenizer file in the given format;
// FormatAuto tries SentencePiece when the bytes look like a protobuf, then llama2.c.
func Parse(data []byte, format Format) (Tokenizer, error) {
	if len(data) == 0 {
		return nil, errors.New("empty tokenizer file")
	}
	switch format {
	case FormatSentencePiece:
		return asTokenizer(parseSentencePiece(data))
	case FormatLlama2C:
		return asTokenizer(parseLlama2C(data))
	}
	// A ModelProto starts with field 1 (pieces), wire type 2: tag byte 0x0A.
	if data[0] == 0x0A {
		tok, spErr := asTokenizer(parseSentencePiece(data))
		if spErr == nil {
			return tok, nil
		}
		tok, binErr := asTokenizer(parseLlama2C(data))
		if binErr == nil {
			return tok, nil
		}
		return nil, fmt.Errorf("not a SentencePiece model (%v) nor a llama2.c tokenizer (%v)", spErr, binErr)
	}
	tok, binErr := asTokenizer(parseLlama2C(data))
	if binErr != nil {
		return nil, fmt.Errorf("not a SentencePiece model (does not start with a pieces field) nor a llama2.c tokenizer (%v)", binErr)
	}
	return tok, nil
}

// asTokenizer avoids a typed nil pointer inside a non-nil interface on error.
func asTokenizer[T Tokenizer](t T, err error) (Tokenizer, error) {
	if err != nil {
		return nil, err
	}
	return t, nil
}

// findNames are the file names Find tries, in order of preference.
var findNames = []string{"tokenizer.model", "tokenizer.bin"}

const findPattern = "tok*.bin"

// Find locates the tokenizer belonging to a model: modelPath is either a model directory
// (a Hugging Face layout) or a model file (a llama2.c .bin, a .safetensors file), whose
// directory is searched. It returns tokenizer.model, else tokenizer.bin, else the single
// file matching tok*.bin. Failing those, a tokenizer of any name is found by content: the
// single *.model or *.bin file (never modelPath itself) that loads as a tokenizer, such as
// tok105.model beside model5000.bin. Several candidates are an error that lists them.
func Find(modelPath string) (string, error) {
	fi, err := os.Stat(modelPath)
	if err != nil {
		return "", fmt.Errorf("tokenizer: cannot look for a tokenizer next to %s: %w", modelPath, err)
	}
	dir := modelPath
	if !fi.IsDir() {
		dir = filepath.Dir(modelPath)
	}
	for _, name := range findNames {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	matches, err := filepath.Glob(filepath.Join(dir, findPattern))
	if err != nil {
		return "", fmt.Errorf("tokenizer: %w", err)
	}
	var files []string
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && !st.IsDir() && !sameFile(m, modelPath) {
			files = append(files, m)
		}
	}
	sort.Strings(files)
	switch len(files) {
	case 1:
		return files[0], nil
	case 0:
	default:
		return "", fmt.Errorf("tokenizer: several tokenizers in %s (%s); pass the one to use explicitly (--tokenizer PATH)",
			dir, strings.Join(files, ", "))
	}
	found, rejected, err := findByContent(dir, modelPath)
	if err != nil {
		return "", err
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		msg := fmt.Sprintf("tokenizer: no tokenizer in %s (looked for %s, %s, then any *.model or *.bin that loads as one)",
			dir, strings.Join(findNames, ", "), findPattern)
		if len(rejected) > 0 {
			msg += "; not tokenizers: " + strings.Join(rejected, "; ")
		}
		return "", errors.New(msg + "; pass the tokenizer file explicitly (--tokenizer PATH)")
	}
	return "", fmt.Errorf("tokenizer: several tokenizers in %s (%s); pass the one to use explicitly (--tokenizer PATH)",
		dir, strings.Join(found, ", "))
}

// findByContent returns the *.model and *.bin files of dir other than modelPath that load as
// tokenizers, and for the others why not. Files larger than any tokenizer are skipped
// unread (a model's weights, typically).
func findByContent(dir, modelPath string) (found, rejected []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("tokenizer: %w", err)
	}
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if ext != ".model" && ext != ".bin" {
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() || sameFile(p, modelPath) {
			continue
		}
		if st.Size() > maxFileSize {
			continue
		}
		if _, err := Load(p); err != nil {
			rejected = append(rejected, fmt.Sprintf("%s (%v)", e.Name(), strings.TrimPrefix(err.Error(), "tokenizer: "+p+": ")))
			continue
		}
		found = append(found, p)
	}
	sort.Strings(found)
	return found, rejected, nil
}

// sameFile reports whether a and b name the same file.
func sameFile(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// pieceKind classifies a vocabulary entry for decoding.
type pieceKind uint8

const (
	kindNormal  pieceKind = iota
	kindControl           // BOS, EOS, padding: no text
	kindByte              // <0xNN>: one raw byte
	kindUnknown           // decodes to the unknown surface
)

// vocab holds what Decode and Piece need; both formats fill it.
type vocab struct {
	text       []string // decoded text of each id (spaces as ' ', bytes raw, control empty)
	kind       []pieceKind
	bos, eos   int
	stripDummy bool // the encoder prepends a space that Decode must drop
}

func (v *vocab) VocabSize() int { return len(v.text) }
func (v *vocab) BOS() int       { return v.bos }
func (v *vocab) EOS() int       { return v.eos }

const invalidID = "\uFFFD"

func (v *vocab) Decode(ids []int) string {
	var sb strings.Builder
	for _, id := range ids {
		if id < 0 || id >= len(v.text) {
			sb.WriteString(invalidID)
			continue
		}
		sb.WriteString(v.text[id])
	}
	s := sb.String()
	if v.stripDummy && strings.HasPrefix(s, " ") {
		s = s[1:]
	}
	return s
}

func (v *vocab) Piece(prev, id int) string {
	if id < 0 || id >= len(v.text) {
		return invalidID
	}
	s := v.text[id]
	if prev == v.bos && v.kind[id] == kindNormal && strings.HasPrefix(s, " ") {
		s = s[1:]
	}
	return s
}

// parseByteToken reports the byte of a "<0xNN>" piece.
func parseByteToken(s string) (byte, bool) {
	if len(s) != 6 || s[:3] != "<0x" || s[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexVal(s[3])
	lo, ok2 := hexVal(s[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
