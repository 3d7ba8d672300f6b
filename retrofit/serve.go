package retrofit

import (
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/serve"
)

// ServeOptions say which model `dmc serve` runs and how.
type ServeOptions struct {
	Model, Tokenizer string
	Device           string // cpu or cuda
	Cache            string // auto, vanilla or dmc
	ModelID          string // the name in responses (default: the model path's base name)
	MaxBatch         int    // sequences decoded together
	MaxContext       int    // positions per sequence (0: the model's max_seq_len)
	PrefillTokens    int    // prompt tokens prefilled between two decode steps (0: no bound)
	Warn             io.Writer
}

// ServeBackend loads the model, its tokenizer and cache, and the decoder on the device:
// what serve.New runs. Close frees the decoder's device memory.
type ServeBackend struct {
	serve.Backend
	Decoder     *Decoder
	Description string // "[GPU] model (params), cache …" for the start-up line
}

// OpenServe prepares o's model for serving.
func OpenServe(o ServeOptions) (*ServeBackend, error) {
	if o.MaxBatch < 1 {
		return nil, fmt.Errorf("--max-batch must be ≥ 1 (got %d)", o.MaxBatch)
	}
	if o.MaxContext < 0 {
		return nil, fmt.Errorf("--max-context must be ≥ 0 (got %d; 0 = the model's)", o.MaxContext)
	}
	m, err := LoadModel(o.Model, LoadOptions{Tokenizer: o.Tokenizer, NeedTokenizer: true, Warn: o.Warn})
	if err != nil {
		return nil, err
	}
	cache, err := m.Cache(o.Cache)
	if err != nil {
		return nil, err
	}
	cfg := m.Weights.Config
	ctxLen := cfg.MaxSeqLen
	if o.MaxContext > 0 {
		if o.MaxContext > cfg.MaxSeqLen {
			return nil, fmt.Errorf("--max-context %d is over the model's max_seq_len %d", o.MaxContext, cfg.MaxSeqLen)
		}
		ctxLen = o.MaxContext
	}
	dec, err := NewBatchDecoder(m, cache, o.Device, ctxLen, o.MaxBatch)
	if err != nil {
		return nil, err
	}
	id := o.ModelID
	if id == "" {
		id = strings.TrimSuffix(filepath.Base(filepath.Clean(o.Model)), filepath.Ext(o.Model))
	}
	b := &ServeBackend{Decoder: dec, Backend: serve.Backend{Decoder: dec, Tokenizer: m.Tokenizer, ModelID: id,
		MaxContext: ctxLen, MaxBatch: o.MaxBatch, PrefillTokens: o.PrefillTokens}}
	if _, _, ok, _ := dec.CacheOccupancy(); ok {
		b.Cache = func() (int64, float64, error) {
			slots, cr, _, err := dec.CacheOccupancy()
			return slots, cr, err
		}
	}
	if pages, pt, rows, ok := dec.KVPool(); ok {
		// Admission by pool pages: a sequence reserves the pages of its prompt plus max_tokens
		// at the compression it is expected to reach (an export's measured CR, else none).
		cr := 1.0
		if cache.DMC != nil && m.Info != nil && m.Info.AchievedCR > 1 {
			cr = m.Info.AchievedCR
		}
		b.Pool = &serve.Pool{Total: pages, Need: func(n int) int64 {
			slots := int(math.Ceil(float64(n)/cr)) + 1
			return int64(rows) * int64((slots+pt-1)/pt)
		}}
	}
	b.Description = fmt.Sprintf("%s%s (%s params), cache %s, context %d, batch %d", dec.Label(), id,
		HumanCount(cfg.NumParams()), cache.Name, ctxLen, o.MaxBatch)
	return b, nil
}
