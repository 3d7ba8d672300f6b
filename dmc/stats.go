package dmc

// Stats counts tokens seen and slots kept per [layer][KV head]. Add accumulates several
// sequences (an evaluation run) so that CR is tokens over slots of the whole run.
type Stats struct {
	Tokens [][]int `json:"tokens"`
	Slots  [][]int `json:"slots"`
}

// Stats snapshots the cache's counts.
func (c *CompressedCache[T]) Stats() Stats {
	L, H := c.mc.NLayers, c.mc.NKVHeads
	s := Stats{Tokens: make([][]int, L), Slots: make([][]int, L)}
	for l := range L {
		s.Tokens[l], s.Slots[l] = make([]int, H), make([]int, H)
		for h := range H {
			s.Tokens[l][h], s.Slots[l][h] = c.Tokens(l, h), c.NumSlots(l, h)
		}
	}
	return s
}

// Add accumulates o into s (which may be empty). It panics when the shapes differ.
func (s *Stats) Add(o Stats) {
	if s.Tokens == nil {
		s.Tokens, s.Slots = make([][]int, len(o.Tokens)), make([][]int, len(o.Slots))
		for l := range o.Tokens {
			s.Tokens[l], s.Slots[l] = make([]int, len(o.Tokens[l])), make([]int, len(o.Slots[l]))
		}
	}
	if len(s.Tokens) != len(o.Tokens) {
		panic("dmc.Stats.Add: different layer counts")
	}
	for l := range o.Tokens {
		if len(s.Tokens[l]) != len(o.Tokens[l]) {
			panic("dmc.Stats.Add: different KV head counts")
		}
		for h := range o.Tokens[l] {
			s.Tokens[l][h] += o.Tokens[l][h]
			s.Slots[l][h] += o.Slots[l][h]
		}
	}
}

func ratio(tok, slots int) float64 {
	if slots == 0 {
		return 1
	}
	return float64(tok) / float64(slots)
}

// CR is total tokens over total slots (1 when empty).
func (s Stats) CR() float64 {
	var tok, slots int
	for l := range s.Tokens {
		for h := range s.Tokens[l] {
			tok += s.Tokens[l][h]
			slots += s.Slots[l][h]
		}
	}
	return ratio(tok, slots)
}

// LayerCR is the compression rate of one layer.
func (s Stats) LayerCR(layer int) float64 {
	var tok, slots int
	for h := range s.Tokens[layer] {
		tok += s.Tokens[layer][h]
		slots += s.Slots[layer][h]
	}
	return ratio(tok, slots)
}

// HeadCR is the compression rate of one (layer, KV head).
func (s Stats) HeadCR(layer, kvHead int) float64 {
	return ratio(s.Tokens[layer][kvHead], s.Slots[layer][kvHead])
}
