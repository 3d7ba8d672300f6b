package model

// KVCache is the attention memory of one sequence, per layer and KV head. The forward hands it
// each new token's q, k and v before RoPE; the cache decides which slot the key/value land in
// (append, or for DMC merge into the last slot) and rotates the stored keys itself, so a merged
// key can be rotated at the position of its newest token. Implementations may modify q and k in
// place (DMC zeroes the decision channel, which then takes no part in attention).
type KVCache[T Float] interface {
	// Put ingests the token at position pos (0-based) for one layer: q is [NHeads*D], k and v
	// are [NKVHeads*D], all pre-RoPE. Calls come in increasing pos for each layer.
	Put(layer, pos int, q, k, v []T)
	// Slots returns the stored (rotated) keys and the values of one (layer, KV head) as n
	// row-major slots of D values. The slices stay valid until the next Put.
	Slots(layer, kvHead int) (keys, values []T, n int)
}

// Cloner is a cache that can be copied: the copy continues independently from the same state
// (the choices of a multiple-choice item continue one context, computed once).
type Cloner[T Float] interface {
	Clone() KVCache[T]
}

// VanillaCache stores every token's rotated key and value: compression rate 1.
type VanillaCache[T Float] struct {
	cfg    Config
	rope   *RoPE
	keys   [][]T // [layer*NKVHeads + head] -> n*D
	values [][]T
}

// NewVanillaCache makes an empty uncompressed cache for cfg.
func NewVanillaCache[T Float](cfg Config) *VanillaCache[T] {
	n := cfg.NLayers * cfg.NKVHeads
	return &VanillaCache[T]{cfg: cfg, rope: NewRoPE(cfg), keys: make([][]T, n), values: make([][]T, n)}
}

// Put appends the rotated key and the value of every KV head.
func (c *VanillaCache[T]) Put(layer, pos int, q, k, v []T) {
	D := c.cfg.HeadDim()
	for h := 0; h < c.cfg.NKVHeads; h++ {
		i := layer*c.cfg.NKVHeads + h
		start := len(c.keys[i])
		c.keys[i] = append(c.keys[i], k[h*D:(h+1)*D]...)
		Rotate(c.rope, c.keys[i][start:], pos)
		c.values[i] = append(c.values[i], v[h*D:(h+1)*D]...)
	}
}

// Slots returns the keys and values of (layer, kvHead).
func (c *VanillaCache[T]) Slots(layer, kvHead int) ([]T, []T, int) {
	i := layer*c.cfg.NKVHeads + kvHead
	return c.keys[i], c.values[i], len(c.keys[i]) / c.cfg.HeadDim()
}

// Reset empties the cache, keeping its memory.
func (c *VanillaCache[T]) Reset() {
	for i := range c.keys {
		c.keys[i] = c.keys[i][:0]
		c.values[i] = c.values[i][:0]
	}
}

// Clone implements Cloner.
func (c *VanillaCache[T]) Clone() KVCache[T] {
	n := &VanillaCache[T]{cfg: c.cfg, rope: c.rope, keys: make([][]T, len(c.keys)), values: make([][]T, len(c.values))}
	for i := range c.keys {
		n.keys[i] = append([]T(nil), c.keys[i]...)
		n.values[i] = append([]T(nil), c.values[i]...)
	}
	return n
}
