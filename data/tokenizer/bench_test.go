package tokenizer

import (
	"os"
	"reflect"
	"testing"
)

// benchEncode measures Encode over the 2 MiB TinyStories file in one call (the merger is
// O(n log n), so no chunking is needed); it reports MB/s and bytes per token.
func benchEncode(b *testing.B, tokPath string) {
	tok := mustLoad(b, tokPath)
	needAsset(b, trainStories)
	data, err := os.ReadFile(trainStories)
	if err != nil {
		b.Fatal(err)
	}
	text := string(data)
	b.SetBytes(int64(len(text)))
	var n, runs int
	cpu0 := processCPU()
	for b.Loop() {
		n = len(tok.Encode(text, true, false))
		runs++
	}
	b.ReportMetric(float64(len(text))/float64(n), "bytes/token")
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(len(text)*runs)/1e6/cpu.Seconds(), "MB/cpu-s")
	}
}

func BenchmarkEncodeTok512(b *testing.B)      { benchEncode(b, tok512Path) }
func BenchmarkEncodeLlama2Model(b *testing.B) { benchEncode(b, llamaModelPath) }
func BenchmarkEncodeLlama2Bin(b *testing.B)   { benchEncode(b, llamaBinPath) }

func BenchmarkDecodeTok512(b *testing.B) {
	tok := mustLoad(b, tok512Path)
	needAsset(b, trainStories)
	data, err := os.ReadFile(trainStories)
	if err != nil {
		b.Fatal(err)
	}
	ids := tok.Encode(string(data), true, false)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		tok.Decode(ids)
	}
}

// TestCorpus checks on TinyStories text encoded in one piece: exact round trip for all
// three tokenizers, .model == .bin, and agreement with go-sentencepiece (which works on
// this text: it has no long space runs). It uses the first 256 KiB, or the whole 2 MiB
// with DMC_TOKENIZER_FULL=1 (about 10 s on 2 busy cores).
func TestCorpus(t *testing.T) {
	needAsset(t, trainStories)
	data, err := os.ReadFile(trainStories)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("DMC_TOKENIZER_FULL") == "" {
		data = data[:256<<10]
	}
	text := string(data)
	var byModel []int
	for _, p := range []string{tok512Path, llamaBinPath, llamaModelPath} {
		tok := mustLoad(t, p)
		ids := tok.Encode(text, true, true)
		if tok.Decode(ids) != text {
			t.Errorf("%s: the corpus does not round-trip", p)
		}
		switch p {
		case llamaBinPath:
			byModel = ids
		case llamaModelPath:
			if !reflect.DeepEqual(ids, byModel) {
				t.Errorf(".model and .bin disagree on the corpus")
			}
			lib, err := newLibraryFromFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want, err := lib.encode(text)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ids[1:len(ids)-1], want) {
				t.Errorf("go-sentencepiece disagrees on the corpus")
			}
		}
	}
}
