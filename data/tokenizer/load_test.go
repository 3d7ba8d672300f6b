package tokenizer

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// llama2cFile builds a tokenizer.bin: the header, then each piece with its score.
func llama2cFile(maxLen int32, pieces []string, scores []float32) []byte {
	out := binary.LittleEndian.AppendUint32(nil, uint32(maxLen))
	for i, p := range pieces {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(scores[i]))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p)))
		out = append(out, p...)
	}
	return out
}

// validLlama2C is a minimal valid tokenizer.bin: <unk>, BOS, EOS, 256 bytes, a few merges.
func validLlama2C() []byte {
	pieces := []string{"<unk>", "\n<s>\n", "\n</s>\n"}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, "<0x"+hex2(byte(b))+">")
	}
	pieces = append(pieces, " ", "a", "b", " a", "ab", " ab")
	scores := make([]float32, len(pieces))
	for i := range scores {
		scores[i] = -float32(i)
	}
	return llama2cFile(6, pieces, scores)
}

func TestParseLlama2CSmall(t *testing.T) {
	tok, err := Parse(validLlama2C(), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	// " ab": " a" (259+3 id 262) has a better score than "ab", then " a"+"b" = " ab".
	got := tok.Encode("ab", true, false)
	if want := []int{1, 264}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Encode(ab) = %v, want %v", got, want)
	}
	if tok.Decode(got) != "ab" {
		t.Errorf("Decode = %q", tok.Decode(got))
	}
}

// malformed lists inputs that must be rejected with an error (never a panic).
func malformed(tb testing.TB) map[string][]byte {
	valid := validLlama2C()
	pieces, _ := smallPieces(true)
	model := spSpec{pieces: pieces, byteFallback: true}.build()
	cases := map[string][]byte{
		"empty":                      {},
		"three bytes":                {1, 0, 0},
		"garbage":                    []byte("this is not a tokenizer at all, just some text\n"),
		"zero max_token_length":      llama2cFile(0, []string{"a"}, []float32{0}),
		"negative max_token_length":  llama2cFile(-5, []string{"a"}, []float32{0}),
		"too few tokens":             llama2cFile(5, []string{"<unk>", "a", "b"}, []float32{0, 0, 0}),
		"token longer than max":      llama2cFile(1, []string{"<unk>", "ab"}, []float32{0, 0}),
		"negative token length":      append(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32([]byte{5, 0, 0, 0}, 0), 0xFFFFFFFF), 'x'),
		"bin truncated in a header":  valid[:len(valid)-12],
		"bin truncated in a token":   valid[:len(valid)-2],
		"bin byte tokens misplaced":  llama2cFile(6, append([]string{"<unk>"}, strings.Split(strings.Repeat("x,", 300), ",")...), make([]float32, 302)),
		"model truncated":            model[:len(model)/2],
		"model truncated in a field": model[:len(model)-3],
		"wrong magic (PNG)":          append([]byte("\x89PNG\r\n\x1a\n"), valid[8:]...),
		"protobuf, wrong messages":   {0x0A, 0x03, 0xFF, 0xFF, 0xFF},
	}
	if data, err := os.ReadFile(llamaModelPath); err == nil {
		// Small prefixes keep the fuzzer's inputs small.
		cases["Llama 2 model truncated"] = data[:4000]
		cases["Llama 2 model, bytes flipped"] = flip(data[:4000], 1000)
	}
	if data, err := os.ReadFile(tok512Path); err == nil {
		cases["tok512 truncated"] = data[:len(data)-1]
	}
	return cases
}

func flip(data []byte, at int) []byte {
	out := append([]byte(nil), data...)
	for i := at; i < at+8 && i < len(out); i++ {
		out[i] ^= 0xFF
	}
	return out
}

func TestParseRejectsMalformed(t *testing.T) {
	for name, data := range malformed(t) {
		t.Run(name, func(t *testing.T) {
			for _, f := range []Format{FormatAuto, FormatSentencePiece, FormatLlama2C} {
				if _, err := Parse(data, f); err == nil {
					t.Errorf("Parse(%s) accepted it", f)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pieces, _ := smallPieces(true)
	model := spSpec{pieces: pieces, byteFallback: true}.build()
	tests := []struct {
		name, path, wantErr string
		wantVocab           int
	}{
		{"model by extension", write("a.model", model), "", len(pieces)},
		{"model by content", write("tokenizer.dat", model), "", len(pieces)},
		{"bin by content", write("tok", validLlama2C()), "", 265},
		{"bin named .model", write("wrong.model", validLlama2C()), "SentencePiece", 0},
		{"model named .bin", write("wrong.bin", model), "llama2.c", 0},
		{"empty", write("empty.bin", nil), "empty", 0},
		{"missing", filepath.Join(dir, "nope.model"), "no such file", 0},
		{"directory", dir, "directory", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Load(tc.path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err = %v, want one containing %q", err, tc.wantErr)
				}
				if tok != nil {
					t.Errorf("tokenizer %v returned with an error", tok)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tok.VocabSize() != tc.wantVocab {
				t.Errorf("VocabSize = %d, want %d", tok.VocabSize(), tc.wantVocab)
			}
		})
	}
}

func TestFind(t *testing.T) {
	touch := func(paths ...string) string {
		dir := t.TempDir()
		for _, p := range paths {
			full := filepath.Join(dir, p)
			if strings.HasSuffix(p, "/") {
				if err := os.MkdirAll(full, 0o755); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := os.WriteFile(full, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tests := []struct {
		name    string
		files   []string
		arg     string // relative to the folder; "" is the folder itself
		want    string // file name, or "" for an error
		wantErr string
	}{
		{"HF directory", []string{"config.json", "tokenizer.model", "tokenizer.json"}, "", "tokenizer.model", ""},
		{"model preferred over bin", []string{"tokenizer.bin", "tokenizer.model"}, "", "tokenizer.model", ""},
		{"next to a llama2.c model", []string{"stories260K.bin", "tok512.bin"}, "stories260K.bin", "tok512.bin", ""},
		{"tokenizer.bin next to a model", []string{"stories15M.bin", "tokenizer.bin"}, "stories15M.bin", "tokenizer.bin", ""},
		{"ambiguous tok*.bin", []string{"m.bin", "tok512.bin", "tok4096.bin"}, "m.bin", "", "several tokenizers"},
		{"none", []string{"model.safetensors", "config.json"}, "", "", "tokenizer.model, tokenizer.bin, tok*.bin"},
		{"directory named tokenizer.model ignored", []string{"tokenizer.model/", "tokenizer.bin"}, "", "tokenizer.bin", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := touch(tc.files...)
			got, err := Find(filepath.Join(dir, tc.arg))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Find = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != filepath.Join(dir, tc.want) {
				t.Errorf("Find = %q, %v; want %s", got, err, tc.want)
			}
		})
	}
	if _, err := Find(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Find of a missing path succeeded")
	}
}

func TestFindRealAssets(t *testing.T) {
	needAsset(t, tok512Path)
	got, err := Find(filepath.Join(filepath.Dir(tok512Path), "stories260K.bin"))
	if err != nil || filepath.Base(got) != "tok512.bin" {
		t.Errorf("Find next to stories260K.bin = %q, %v", got, err)
	}
	got, err = Find(filepath.Dir(llamaModelPath))
	if err != nil || filepath.Base(got) != "tokenizer.model" {
		t.Errorf("Find in llama2-tokenizer = %q, %v", got, err)
	}
}

// FuzzLoad checks that no input makes parsing, encoding or decoding panic. Its seeds
// (valid files, real truncated files, garbage) run with the normal tests.
func FuzzLoad(f *testing.F) {
	pieces, _ := smallPieces(true)
	plain, _ := smallPieces(false)
	f.Add(spSpec{pieces: pieces, byteFallback: true}.build())
	f.Add(spSpec{pieces: plain, noNormalizer: true}.build())
	f.Add(validLlama2C())
	for _, data := range malformed(f) {
		f.Add(data)
	}
	for _, p := range []string{tok512Path} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []Format{FormatAuto, FormatSentencePiece, FormatLlama2C} {
			tok, err := Parse(data, format)
			if err != nil {
				continue
			}
			for _, text := range []string{"", "Hello world", " a  b\n", "é中🙂\xff", string(data[:min(len(data), 64)])} {
				ids := tok.Encode(text, true, true)
				for _, id := range ids {
					if id < 0 || id >= tok.VocabSize() {
						t.Fatalf("Encode(%q) gave id %d outside 0..%d", text, id, tok.VocabSize()-1)
					}
				}
				tok.Decode(ids)
			}
			ids := []int{-1, 0, 1, 2, tok.VocabSize() - 1, tok.VocabSize(), int(^uint(0) >> 1)}
			tok.Decode(ids)
			for _, id := range ids {
				tok.Piece(tok.BOS(), id)
			}
		}
	})
}
