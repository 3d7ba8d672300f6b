package checkpoints

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"

	"github.com/dmc-project/dmc/model"
)

// llama2cHeaderBytes is the v0 header: dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len as little-endian int32.
const llama2cHeaderBytes = 7 * 4

// llama2cMagic opens llama2.c's versioned export formats ("ak42"), which this package does not read.
const llama2cMagic = 0x616b3432

// llama2cLayout is a validated v0 header and what it implies about the file.
type llama2cLayout struct {
	cfg       model.Config
	freqFloat int64 // floats of the two freq_cis tables together (skipped)
	fileBytes int64 // exact size a well-formed file has
}

// parseLlama2CHeader validates a v0 header against the file size without allocating anything
// that depends on the header's values.
func parseLlama2CHeader(h []byte, fileSize int64) (llama2cLayout, error) {
	const fix = "; the file is not a llama2.c v0 (legacy) checkpoint or is damaged: re-export it with llama2.c's export.py --version 0"
	if len(h) < llama2cHeaderBytes {
		return llama2cLayout{}, fmt.Errorf("file is %d bytes, shorter than the 28-byte llama2.c header%s", len(h), fix)
	}
	if m := binary.LittleEndian.Uint32(h); m == llama2cMagic {
		v := int32(binary.LittleEndian.Uint32(h[4:]))
		return llama2cLayout{}, fmt.Errorf("this is a llama2.c export of version %d (magic \"ak42\"), only version 0 is supported: re-export with export.py --version 0, or export to Hugging Face format (--version -1)", v)
	}
	var f [7]int64
	for i := range f {
		f[i] = int64(int32(binary.LittleEndian.Uint32(h[4*i:])))
	}
	dim, hidden, layers, heads, kvHeads, vocab, seqLen := f[0], f[1], f[2], f[3], f[4], f[5], f[6]
	tied := vocab > 0
	if vocab < 0 {
		vocab = -vocab
	}
	names := []string{"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"}
	for i, v := range []int64{dim, hidden, layers, heads, kvHeads, vocab, seqLen} {
		if v <= 0 {
			return llama2cLayout{}, fmt.Errorf("llama2.c header field %s is %d, must be positive%s", names[i], f[i], fix)
		}
	}
	if dim%heads != 0 || (dim/heads)%2 != 0 {
		return llama2cLayout{}, fmt.Errorf("llama2.c header: dim %d is not divisible into %d heads of even size%s", dim, heads, fix)
	}
	if heads%kvHeads != 0 {
		return llama2cLayout{}, fmt.Errorf("llama2.c header: n_heads %d is not a multiple of n_kv_heads %d%s", heads, kvHeads, fix)
	}
	hs := dim / heads
	kvDim := kvHeads * hs
	// Every product below is of positive int32 values; sizeSum saturates instead of wrapping.
	var s sizeSum
	s.add(vocab, dim)          // token_embedding
	s.add(layers, dim)         // rms_att
	s.add(layers, dim, dim)    // wq
	s.add(layers, dim, kvDim)  // wk
	s.add(layers, dim, kvDim)  // wv
	s.add(layers, dim, dim)    // wo
	s.add(layers, dim)         // rms_ffn
	s.add(layers, dim, hidden) // w1
	s.add(layers, dim, hidden) // w2
	s.add(layers, dim, hidden) // w3
	s.add(dim)                 // rms_final
	freqStart := s.n
	s.add(seqLen, hs) // freq_cis_real + freq_cis_imag, seq_len*hs/2 each
	freq := int64(s.n - freqStart)
	if !tied {
		s.add(vocab, dim) // wcls
	}
	s.mulBytes(4)
	want := int64(llama2cHeaderBytes) + int64(min(s.n, 1<<62))
	if s.overflow || want > fileSize {
		return llama2cLayout{}, sizeMismatchf("llama2.c header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d) implies a %d-byte file but it has %d bytes: the file is truncated or not a llama2.c v0 checkpoint; re-download or re-export it",
			dim, hidden, layers, heads, kvHeads, f[5], seqLen, want, fileSize)
	}
	if want < fileSize {
		return llama2cLayout{}, sizeMismatchf("llama2.c file has %d bytes after the last tensor (header implies %d bytes, file has %d): trailing garbage, a header that does not match the weights, or a different format%s",
			fileSize-want, want, fileSize, fix)
	}
	cfg := model.Config{
		Dim: int(dim), HiddenDim: int(hidden), NLayers: int(layers), NHeads: int(heads), NKVHeads: int(kvHeads),
		VocabSize: int(vocab), MaxSeqLen: int(seqLen), NormEps: 1e-5, RopeTheta: 10000,
		RoPE: model.RoPEInterleaved, TieEmbeddings: tied,
	}
	if err := cfg.Validate(); err != nil {
		return llama2cLayout{}, fmt.Errorf("llama2.c header: %w", err)
	}
	return llama2cLayout{cfg: cfg, freqFloat: freq, fileBytes: want}, nil
}

// errLlama2CSize marks a header whose fields are consistent but whose implied size differs from
// the file's: a damaged llama2.c file rather than another format.
var errLlama2CSize = errors.New("llama2.c size mismatch")

func sizeMismatchf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errLlama2CSize}, args...)...)
}

// sizeSum accumulates products of non-negative sizes, remembering overflow.
type sizeSum struct {
	n        uint64
	overflow bool
}

func (s *sizeSum) add(factors ...int64) {
	p := uint64(1)
	for _, f := range factors {
		hi, lo := bits.Mul64(p, uint64(f))
		if hi != 0 || lo > 1<<62 {
			s.overflow = true
			return
		}
		p = lo
	}
	s.n += p
	if s.n > 1<<62 {
		s.overflow = true
	}
}

func (s *sizeSum) mulBytes(k uint64) {
	if s.n > (1<<62)/k {
		s.overflow = true
	}
	s.n *= k
}

// ReadLlama2CConfig reads only the header of a llama2.c v0 file (validated against its size).
func ReadLlama2CConfig(path string) (model.Config, error) {
	f, size, err := openSized(path)
	if err != nil {
		return model.Config{}, err
	}
	defer f.Close()
	var h [llama2cHeaderBytes]byte
	n, _ := f.ReadAt(h[:], 0)
	lay, err := parseLlama2CHeader(h[:n], size)
	if err != nil {
		return model.Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return lay.cfg, nil
}

// ReadLlama2C reads a llama2.c v0 checkpoint (fp32) into weights with the interleaved RoPE
// layout. Sizes are checked against the file before anything is allocated.
func ReadLlama2C(path string) (*model.Weights, error) {
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w, err := DecodeLlama2C(f, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// DecodeLlama2C reads a llama2.c v0 checkpoint of size bytes from r.
func DecodeLlama2C(r io.ReaderAt, size int64) (*model.Weights, error) {
	var h [llama2cHeaderBytes]byte
	n, err := r.ReadAt(h[:], 0)
	if n < len(h) && err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read llama2.c header: %w", err)
	}
	lay, err := parseLlama2CHeader(h[:n], size)
	if err != nil {
		return nil, err
	}
	w, err := model.NewParams[float32](lay.cfg)
	if err != nil {
		return nil, err
	}
	off := int64(llama2cHeaderBytes)
	for _, t := range llama2cOrder(w) {
		if off, err = readF32At(r, off, t.data); err != nil {
			return nil, fmt.Errorf("read llama2.c weights: %w", err)
		}
	}
	off += 4 * lay.freqFloat
	if !lay.cfg.TieEmbeddings {
		if _, err = readF32At(r, off, w.Output); err != nil {
			return nil, fmt.Errorf("read llama2.c classifier: %w", err)
		}
	}
	return w, nil
}

// llama2cTensor is one tensor of a llama2.c file; qkHeads is the head count of a wq or wk
// (whose rows a RoPE layout change permutes), 0 otherwise.
type llama2cTensor struct {
	data    []float32
	qkHeads int
}

// llama2cOrder lists the tensors up to rms_final in file order (each kind stacked over layers).
func llama2cOrder(w *model.Weights) []llama2cTensor {
	out := []llama2cTensor{{data: w.Embed}}
	c := w.Config
	for _, pick := range []func(*model.Layer[float32]) llama2cTensor{
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.AttnNorm} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{l.Wq, c.NHeads} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{l.Wk, c.NKVHeads} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.Wv} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.Wo} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.FFNNorm} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.W1} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.W2} },
		func(l *model.Layer[float32]) llama2cTensor { return llama2cTensor{data: l.W3} },
	} {
		for i := range w.Layers {
			out = append(out, pick(&w.Layers[i]))
		}
	}
	return append(out, llama2cTensor{data: w.FinalNorm})
}

// readF32At fills dst with little-endian float32s starting at off, in bounded chunks.
func readF32At(r io.ReaderAt, off int64, dst []float32) (int64, error) {
	const per = readChunkBytes / 4
	bufp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufp)
	buf := *bufp
	for i := 0; i < len(dst); i += per {
		n := min(per, len(dst)-i)
		raw := buf[:4*n]
		if _, err := r.ReadAt(raw, off); err != nil {
			return off, err
		}
		decodeFloats(dst[i:i+n], raw, F32)
		off += int64(len(raw))
	}
	return off, nil
}

// WriteLlama2C writes w as a llama2.c v0 checkpoint (fp32), converting a Hugging Face (rotate-
// half) model to the interleaved layout llama2.c's run.c expects. The freq_cis tables are written
// as llama2.c's export does (cos/sin of pos·theta^(-2i/D)); the file appears atomically.
func WriteLlama2C(path string, w *model.Weights) error {
	if err := w.CheckShapes(); err != nil {
		return fmt.Errorf("write llama2.c %s: %w", path, err)
	}
	c := w.Config
	if c.RopeTheta != 10000 || c.NormEps != 1e-5 {
		return fmt.Errorf("write llama2.c %s: the format fixes rope_theta 10000 and norm_eps 1e-5 but the model has %g and %g; export to Hugging Face format instead", path, c.RopeTheta, c.NormEps)
	}
	for _, v := range []int{c.Dim, c.HiddenDim, c.NLayers, c.NHeads, c.NKVHeads, c.VocabSize, c.MaxSeqLen} {
		if v > math.MaxInt32 {
			return fmt.Errorf("write llama2.c %s: size %d does not fit the int32 header", path, v)
		}
	}
	vocab := int32(c.VocabSize)
	if !c.TieEmbeddings {
		vocab = -vocab
	}
	hs := c.HeadDim()
	freqReal := make([]float32, c.MaxSeqLen*hs/2)
	freqImag := make([]float32, len(freqReal))
	for p := 0; p < c.MaxSeqLen; p++ {
		for i := 0; i < hs/2; i++ {
			s, co := math.Sincos(float64(p) * math.Pow(c.RopeTheta, -float64(2*i)/float64(hs)))
			freqReal[p*hs/2+i], freqImag[p*hs/2+i] = float32(co), float32(s)
		}
	}
	tensors := append(llama2cOrder(w), llama2cTensor{data: freqReal}, llama2cTensor{data: freqImag})
	if !c.TieEmbeddings {
		tensors = append(tensors, llama2cTensor{data: w.Output})
	}
	return writeAtomic(path, func(out io.Writer) error {
		hdr := []int32{int32(c.Dim), int32(c.HiddenDim), int32(c.NLayers), int32(c.NHeads), int32(c.NKVHeads), vocab, int32(c.MaxSeqLen)}
		if err := binary.Write(out, binary.LittleEndian, hdr); err != nil {
			return err
		}
		buf := make([]byte, readChunkBytes)
		for _, t := range tensors {
			data := t.data
			if t.qkHeads > 0 && c.RoPE == model.RoPEHalf {
				// One permuted tensor at a time (see WithRoPELayout).
				data = permuteHeadRows(data, t.qkHeads, c.HeadDim(), c.Dim, false)
			}
			for i := 0; i < len(data); i += readChunkBytes / 4 {
				chunk := data[i:min(i+readChunkBytes/4, len(data))]
				encodeFloats(buf, chunk, F32)
				if _, err := out.Write(buf[:4*len(chunk)]); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if st.IsDir() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is a directory, not a llama2.c checkpoint file", path)
	}
	return f, st.Size(), nil
}
