package model

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Float is the element type of the reference forward: float32 for inference, float64 for
// exactness tests.
type Float interface{ ~float32 | ~float64 }

// Layer holds one transformer block. Matrices are row-major [out, in], as in PyTorch,
// Hugging Face safetensors and llama2.c.
type Layer[T Float] struct {
	AttnNorm []T // [Dim]
	Wq       []T // [NHeads*HeadDim, Dim]
	Wk       []T // [NKVHeads*HeadDim, Dim]
	Wv       []T // [NKVHeads*HeadDim, Dim]
	Wo       []T // [Dim, NHeads*HeadDim]
	FFNNorm  []T // [Dim]
	W1       []T // gate_proj [HiddenDim, Dim]
	W3       []T // up_proj   [HiddenDim, Dim]
	W2       []T // down_proj [Dim, HiddenDim]
}

// Params is a full set of Llama weights. When Config.TieEmbeddings is set, Output aliases Embed.
type Params[T Float] struct {
	Config    Config
	Embed     []T // [Vocab, Dim]
	Layers    []Layer[T]
	FinalNorm []T // [Dim]
	Output    []T // [Vocab, Dim]
}

// Weights is the float32 parameter set used for inference and storage.
type Weights = Params[float32]

// Tensor is a named view of one parameter, in the Hugging Face naming scheme.
type Tensor[T Float] struct {
	Name  string
	Shape []int
	Data  []T
}

// Tensors lists every parameter under its Hugging Face Llama name (model.layers.N.self_attn.q_proj.weight
// and so on). The slices alias the parameters. A tied classifier is listed once (as the embedding).
func (p *Params[T]) Tensors() []Tensor[T] {
	c := p.Config
	d, h, q, kv := c.Dim, c.HiddenDim, c.QDim(), c.KVDim()
	out := []Tensor[T]{{"model.embed_tokens.weight", []int{c.VocabSize, d}, p.Embed}}
	for i := range p.Layers {
		l := &p.Layers[i]
		pre := fmt.Sprintf("model.layers.%d.", i)
		out = append(out,
			Tensor[T]{pre + "input_layernorm.weight", []int{d}, l.AttnNorm},
			Tensor[T]{pre + "self_attn.q_proj.weight", []int{q, d}, l.Wq},
			Tensor[T]{pre + "self_attn.k_proj.weight", []int{kv, d}, l.Wk},
			Tensor[T]{pre + "self_attn.v_proj.weight", []int{kv, d}, l.Wv},
			Tensor[T]{pre + "self_attn.o_proj.weight", []int{d, q}, l.Wo},
			Tensor[T]{pre + "post_attention_layernorm.weight", []int{d}, l.FFNNorm},
			Tensor[T]{pre + "mlp.gate_proj.weight", []int{h, d}, l.W1},
			Tensor[T]{pre + "mlp.up_proj.weight", []int{h, d}, l.W3},
			Tensor[T]{pre + "mlp.down_proj.weight", []int{d, h}, l.W2},
		)
	}
	out = append(out, Tensor[T]{"model.norm.weight", []int{d}, p.FinalNorm})
	if !c.TieEmbeddings {
		out = append(out, Tensor[T]{"lm_head.weight", []int{c.VocabSize, d}, p.Output})
	}
	return out
}

// NewParams allocates zeroed parameters for cfg (norm weights set to 1).
func NewParams[T Float](cfg Config) (*Params[T], error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := cfg
	d, h, q, kv := c.Dim, c.HiddenDim, c.QDim(), c.KVDim()
	p := &Params[T]{Config: c, Embed: make([]T, c.VocabSize*d), FinalNorm: ones[T](d)}
	p.Layers = make([]Layer[T], c.NLayers)
	for i := range p.Layers {
		p.Layers[i] = Layer[T]{
			AttnNorm: ones[T](d), FFNNorm: ones[T](d),
			Wq: make([]T, q*d), Wk: make([]T, kv*d), Wv: make([]T, kv*d), Wo: make([]T, d*q),
			W1: make([]T, h*d), W3: make([]T, h*d), W2: make([]T, d*h),
		}
	}
	if c.TieEmbeddings {
		p.Output = p.Embed
	} else {
		p.Output = make([]T, c.VocabSize*d)
	}
	return p, nil
}

func ones[T Float](n int) []T {
	s := make([]T, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

// RandomParams draws weights like a freshly initialised Llama (normal, std 0.02; output
// projections scaled by 1/sqrt(2·layers)), deterministic in seed.
func RandomParams[T Float](cfg Config, seed uint64) (*Params[T], error) {
	p, err := NewParams[T](cfg)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	fill := func(s []T, std float64) {
		for i := range s {
			s[i] = T(rng.NormFloat64() * std)
		}
	}
	resid := 0.02 / math.Sqrt(2*float64(cfg.NLayers))
	fill(p.Embed, 0.02)
	for i := range p.Layers {
		l := &p.Layers[i]
		fill(l.Wq, 0.02)
		fill(l.Wk, 0.02)
		fill(l.Wv, 0.02)
		fill(l.Wo, resid)
		fill(l.W1, 0.02)
		fill(l.W3, 0.02)
		fill(l.W2, resid)
	}
	if !cfg.TieEmbeddings {
		fill(p.Output, 0.02)
	}
	return p, nil
}

// Convert copies parameters into another element type.
func Convert[U, T Float](p *Params[T]) *Params[U] {
	q, err := NewParams[U](p.Config)
	if err != nil {
		panic(err) // p was built from a validated config
	}
	src, dst := p.Tensors(), q.Tensors()
	for i := range src {
		for j, v := range src[i].Data {
			dst[i].Data[j] = U(v)
		}
	}
	return q
}

// CheckShapes verifies every tensor has the length its config implies. Loaders call it so that a
// truncated or mismatched checkpoint is reported instead of indexing out of range later.
func (p *Params[T]) CheckShapes() error {
	if err := p.Config.Validate(); err != nil {
		return err
	}
	if len(p.Layers) != p.Config.NLayers {
		return fmt.Errorf("weights have %d layers but the config says %d", len(p.Layers), p.Config.NLayers)
	}
	for _, t := range p.Tensors() {
		want := 1
		for _, s := range t.Shape {
			want *= s
		}
		if len(t.Data) != want {
			return fmt.Errorf("tensor %s has %d values, want %v = %d", t.Name, len(t.Data), t.Shape, want)
		}
	}
	if len(p.Output) != p.Config.VocabSize*p.Config.Dim {
		return fmt.Errorf("classifier has %d values, want %d", len(p.Output), p.Config.VocabSize*p.Config.Dim)
	}
	return nil
}
