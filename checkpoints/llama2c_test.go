package checkpoints

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/model"
)

const (
	assetsDir    = "../../shared/assets/tinyllamas-stories260K"
	stories260K  = assetsDir + "/stories260K.bin"
	tok512       = assetsDir + "/tok512.bin"
	goldenStory  = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high"
	bosToken     = 1
	storiesBytes = 1056540
)

// requireAsset skips when the shared test assets are not checked out next to the repository.
func requireAsset(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Skipf("test asset %s not available (%v); it lives in the shared assets folder next to the repository", path, err)
	}
}

// tinyConfig is a small GQA model for fast synthetic tests.
func tinyConfig(tied bool) model.Config {
	return model.Config{Dim: 16, HiddenDim: 24, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 32, MaxSeqLen: 16,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEInterleaved, TieEmbeddings: tied}
}

func randomWeights(t testing.TB, cfg model.Config, seed uint64) *model.Weights {
	t.Helper()
	w, err := model.RandomParams[float32](cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	// Random norms too, so a swapped norm tensor is caught.
	for i := range w.Layers {
		for j := range w.Layers[i].AttnNorm {
			w.Layers[i].AttnNorm[j] = 1 + 0.1*float32(j%5) - 0.03*float32(i)
			w.Layers[i].FFNNorm[j] = 1 - 0.07*float32(j%3) + 0.02*float32(i)
		}
	}
	for j := range w.FinalNorm {
		w.FinalNorm[j] = 0.9 + 0.05*float32(j%4)
	}
	return w
}

func equalWeights(t *testing.T, a, b *model.Weights) {
	t.Helper()
	ta, tb := a.Tensors(), b.Tensors()
	if len(ta) != len(tb) {
		t.Fatalf("%d tensors vs %d", len(ta), len(tb))
	}
	for i := range ta {
		if ta[i].Name != tb[i].Name || len(ta[i].Data) != len(tb[i].Data) {
			t.Fatalf("tensor %d: %s[%d] vs %s[%d]", i, ta[i].Name, len(ta[i].Data), tb[i].Name, len(tb[i].Data))
		}
		for j := range ta[i].Data {
			if !sameBits(ta[i].Data[j], tb[i].Data[j]) {
				t.Fatalf("%s[%d]: %g vs %g", ta[i].Name, j, ta[i].Data[j], tb[i].Data[j])
			}
		}
	}
	if !a.Config.TieEmbeddings {
		for j := range a.Output {
			if a.Output[j] != b.Output[j] {
				t.Fatalf("classifier[%d] differs", j)
			}
		}
	}
}

func TestReadLlama2CStories260K(t *testing.T) {
	requireAsset(t, stories260K)
	w, err := ReadLlama2C(stories260K)
	if err != nil {
		t.Fatal(err)
	}
	want := model.Config{Dim: 64, HiddenDim: 172, NLayers: 5, NHeads: 8, NKVHeads: 4, VocabSize: 512, MaxSeqLen: 512,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEInterleaved, TieEmbeddings: true}
	if w.Config != want {
		t.Fatalf("config = %+v, want %+v", w.Config, want)
	}
	if err := w.CheckShapes(); err != nil {
		t.Fatal(err)
	}
	cfg, err := ReadLlama2CConfig(stories260K)
	if err != nil || cfg != want {
		t.Fatalf("ReadLlama2CConfig = %+v, %v", cfg, err)
	}
	// The golden greedy story documented with the model.
	text := greedyStory(t, w, len(goldenStory))
	if !strings.HasPrefix(text, goldenStory) {
		t.Fatalf("greedy decode from BOS:\n got %q\nwant %q", text, goldenStory)
	}
}

// greedyStory decodes greedily from BOS until the text has at least n bytes.
func greedyStory(t *testing.T, w *model.Weights, n int) string {
	t.Helper()
	requireAsset(t, tok512)
	vocab := readLlama2CVocab(t, tok512)
	m := model.New(w)
	cache := model.NewVanillaCache[float32](w.Config)
	var sb strings.Builder
	tok := bosToken
	for pos := 0; sb.Len() < n && pos < w.Config.MaxSeqLen; pos++ {
		logits, err := m.Forward(cache, []int{tok}, pos, false)
		if err != nil {
			t.Fatal(err)
		}
		next := 0
		for i, v := range logits {
			if v > logits[next] {
				next = i
			}
		}
		piece := vocab[next]
		if tok == bosToken {
			piece = strings.TrimPrefix(piece, " ")
		}
		sb.WriteString(piece)
		tok = next
	}
	return sb.String()
}

// readLlama2CVocab reads the pieces of a llama2.c tokenizer.bin (max_len, then score, len, bytes).
func readLlama2CVocab(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(b[4:])
	var vocab []string
	for r.Len() > 0 {
		var score float32
		var n int32
		if err := binary.Read(r, binary.LittleEndian, &score); err != nil {
			t.Fatal(err)
		}
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			t.Fatal(err)
		}
		s := make([]byte, n)
		if _, err := io.ReadFull(r, s); err != nil {
			t.Fatal(err)
		}
		vocab = append(vocab, string(s))
	}
	return vocab
}

// Writing stories260K back reproduces the file byte for byte except for the freq_cis tables,
// which are recomputed (and must agree with PyTorch's float32 cos/sin to rounding).
func TestWriteLlama2CReproducesStories260K(t *testing.T) {
	requireAsset(t, stories260K)
	w, err := ReadLlama2C(stories260K)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "copy.bin")
	if err := WriteLlama2C(out, w); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(stories260K)
	got, _ := os.ReadFile(out)
	if len(got) != len(orig) {
		t.Fatalf("wrote %d bytes, original has %d", len(got), len(orig))
	}
	c := w.Config
	freqStart := len(orig) - 4*c.MaxSeqLen*c.HeadDim()
	if !bytes.Equal(got[:freqStart], orig[:freqStart]) {
		t.Fatal("header or weights differ from the original file")
	}
	for off := freqStart; off < len(orig); off += 4 {
		a := math.Float32frombits(binary.LittleEndian.Uint32(orig[off:]))
		b := math.Float32frombits(binary.LittleEndian.Uint32(got[off:]))
		if math.Abs(float64(a-b)) > 1e-3 {
			t.Fatalf("freq_cis at byte %d: original %g, written %g", off, a, b)
		}
	}
}

func TestLlama2CRoundTrip(t *testing.T) {
	for _, tied := range []bool{true, false} {
		cfg := tinyConfig(tied)
		w := randomWeights(t, cfg, 7)
		path := filepath.Join(t.TempDir(), "m.bin")
		if err := WriteLlama2C(path, w); err != nil {
			t.Fatal(err)
		}
		back, err := ReadLlama2C(path)
		if err != nil {
			t.Fatal(err)
		}
		if back.Config != cfg {
			t.Fatalf("tied=%v: config %+v, want %+v", tied, back.Config, cfg)
		}
		equalWeights(t, w, back)
		// A rotate-half model is converted to the interleaved layout on the way out.
		half, err := WithRoPELayout(w, model.RoPEHalf)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteLlama2C(path, half); err != nil {
			t.Fatal(err)
		}
		back2, err := ReadLlama2C(path)
		if err != nil {
			t.Fatal(err)
		}
		equalWeights(t, w, back2)
	}
}

func TestLlama2CCorrupt(t *testing.T) {
	cfg := tinyConfig(false)
	path := filepath.Join(t.TempDir(), "good.bin")
	if err := WriteLlama2C(path, randomWeights(t, cfg, 1)); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(path)
	setField := func(i int, v int32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
		return b
	}
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "shorter than the 28-byte"},
		{"header only partly", good[:20], "shorter than the 28-byte"},
		{"truncated weights", good[:len(good)-4], "implies a"},
		{"header only", good[:28], "implies a"},
		{"trailing garbage", append(bytes.Clone(good), 1, 2, 3, 4), "4 bytes after the last tensor"},
		{"zero dim", setField(0, 0), "dim is 0"},
		{"negative layers", setField(2, -3), "n_layers is -3"},
		{"zero vocab", setField(5, 0), "vocab_size is 0"},
		{"dim not divisible by heads", setField(3, 3), "not divisible"},
		{"odd head size", setField(3, 16), "of even size"},
		{"heads not multiple of kv heads", setField(4, 3), "not a multiple"},
		{"absurd sizes", setField(0, 1<<30), "implies a"},
		{"absurd layers", setField(2, math.MaxInt32), "implies a"},
		{"tied flag flipped", setField(5, 32), "bytes after the last tensor"},
		{"versioned export", append([]byte("24ka\x01\x00\x00\x00"), good[8:]...), "version 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.bin")
			if err := os.WriteFile(p, tc.file, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ReadLlama2C(p)
			if err == nil {
				t.Fatalf("accepted, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "export") && !strings.Contains(err.Error(), "re-download") {
				t.Errorf("error %q: want %q and advice", err, tc.want)
			}
			if _, err := ReadLlama2CConfig(p); err == nil {
				t.Error("ReadLlama2CConfig accepted it")
			}
		})
	}
}

func TestWithRoPELayoutPreservesModel(t *testing.T) {
	w := randomWeights(t, tinyConfig(true), 3)
	half, err := WithRoPELayout(w, model.RoPEHalf)
	if err != nil {
		t.Fatal(err)
	}
	if w.Config.RoPE != model.RoPEInterleaved || half.Config.RoPE != model.RoPEHalf {
		t.Fatal("layouts not as expected (input must not change)")
	}
	tokens := []int{1, 5, 9, 30, 2, 17}
	a := forwardAll(t, w, tokens)
	b := forwardAll(t, half, tokens)
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-5 {
			t.Fatalf("logit %d: interleaved %g, half %g", i, a[i], b[i])
		}
	}
	back, err := WithRoPELayout(half, model.RoPEInterleaved)
	if err != nil {
		t.Fatal(err)
	}
	equalWeights(t, w, back)
	if same, _ := WithRoPELayout(w, model.RoPEInterleaved); same != w {
		t.Error("no-op conversion should return its input")
	}
	if _, err := WithRoPELayout(w, "sideways"); err == nil {
		t.Error("unknown layout accepted")
	}
}

func forwardAll(t *testing.T, w *model.Weights, tokens []int) []float32 {
	t.Helper()
	logits, err := model.New(w).Forward(model.NewVanillaCache[float32](w.Config), tokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	return logits
}

// FuzzLlama2C: arbitrary bytes must give weights or an error, never a panic; accepted files have
// exactly the size their header implies.
func FuzzLlama2C(f *testing.F) {
	var b bytes.Buffer
	cfg := model.Config{Dim: 4, HiddenDim: 3, NLayers: 1, NHeads: 2, NKVHeads: 1, VocabSize: 3, MaxSeqLen: 2,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEInterleaved}
	w, _ := model.NewParams[float32](cfg)
	path := filepath.Join(f.TempDir(), "seed.bin")
	if err := WriteLlama2C(path, w); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Add(seed[:40])
	b.Write(seed)
	b.Write([]byte{0, 0, 0, 0})
	f.Add(b.Bytes())
	f.Add([]byte("24ka\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, file []byte) {
		w, err := DecodeLlama2C(bytes.NewReader(file), int64(len(file)))
		if err != nil {
			return
		}
		if err := w.CheckShapes(); err != nil {
			t.Fatalf("accepted weights fail CheckShapes: %v", err)
		}
		if n := 28 + 4*(w.Config.NumParams()+int64(w.Config.MaxSeqLen*w.Config.HeadDim())); n != int64(len(file)) {
			t.Fatalf("accepted a %d-byte file whose header implies %d bytes", len(file), n)
		}
	})
}

func TestRoPEChannel(t *testing.T) {
	const D = 8
	// Rows of a single head permuted by WithRoPELayout: row r of the input must land at RoPEChannel(r).
	cfg := model.Config{Dim: D, HiddenDim: 4, NLayers: 1, NHeads: 1, NKVHeads: 1, VocabSize: 2, MaxSeqLen: 2,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEInterleaved, TieEmbeddings: true}
	w, _ := model.NewParams[float32](cfg)
	for r := 0; r < D; r++ {
		w.Layers[0].Wq[r*D] = float32(r)
	}
	half, err := WithRoPELayout(w, model.RoPEHalf)
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < D; r++ {
		to := RoPEChannel(r, D, model.RoPEInterleaved, model.RoPEHalf)
		if half.Layers[0].Wq[to*D] != float32(r) {
			t.Errorf("interleaved channel %d: RoPEChannel says %d, WithRoPELayout put it elsewhere", r, to)
		}
		if back := RoPEChannel(to, D, model.RoPEHalf, model.RoPEInterleaved); back != r {
			t.Errorf("RoPEChannel is not inverted: %d -> %d -> %d", r, to, back)
		}
	}
	for _, c := range []int{0, D - 1} {
		if RoPEChannel(c, D, model.RoPEInterleaved, model.RoPEHalf) != c {
			t.Errorf("channel %d moved", c)
		}
	}
	if RoPEChannel(3, D, model.RoPEHalf, model.RoPEHalf) != 3 {
		t.Error("same layout must not move channels")
	}
}
