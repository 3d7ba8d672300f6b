package dmctest

import (
	"fmt"
	"math"
	"slices"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// MergeTarget is the fraction of tokens calibrated to merge for a (layer, KV head): 0.2 to 0.9
// varying by head, so that the invariant tests see heads of very different compression.
func MergeTarget(layer, head, nkv int) float64 {
	return 0.2 + 0.7*float64((layer*nkv+head)%5)/4
}

// CalibrateDecisions rescales, layer by layer, the W_k row that produces the decision channel of
// every KV head so that about MergeTarget of the tokens merge (fewer when k[ch] has too few
// values on either side of 0: a scale cannot move the threshold across 0). The threshold is
// placed halfway between two neighbouring values of k[ch], so no decision logit sits near 0 and
// float rounding cannot flip a decision between two exact implementations.
func CalibrateDecisions(p *model.Params[float64], cfg dmc.Config, tokens []int) error {
	c := p.Config
	D := c.HeadDim()
	ch := cfg.Channel(D)
	for li := range p.Layers {
		cache, err := dmc.NewCompressedCache[float64](c, cfg, dmc.WithDecisionRecord())
		if err != nil {
			return err
		}
		if _, err := model.New(p).Forward(cache, tokens, 0, true); err != nil {
			return err
		}
		for h := 0; h < c.NKVHeads; h++ {
			var ks []float64
			for _, d := range cache.Decisions(li, h)[1:] { // position 0 always appends
				ks = append(ks, d.Logit+cfg.DecisionOffset)
			}
			slices.Sort(ks)
			m := len(ks)
			thr := math.NaN()
			for merges := int(math.Round(MergeTarget(li, h, c.NKVHeads) * float64(m))); merges > 0 && math.IsNaN(thr); merges-- {
				// Equal neighbours (repeated tokens give equal keys in layer 0) have no gap.
				a, b := ks[m-merges-1], ks[m-merges]
				if hi := (a + b) / 2; hi > 0 && b-a > 1e-6*hi {
					thr = hi // scale > 0: the largest values merge
				} else if a, b = ks[merges-1], ks[merges]; (a+b)/2 < 0 && b-a > -1e-6*(a+b)/2 {
					thr = (a + b) / 2 // scale < 0: the smallest values merge
				}
			}
			if math.IsNaN(thr) {
				return fmt.Errorf("layer %d head %d: cannot place a decision threshold", li, h)
			}
			row := p.Layers[li].Wk[(h*D+ch)*c.Dim : (h*D+ch+1)*c.Dim]
			for i := range row {
				row[i] *= cfg.DecisionOffset / thr
			}
		}
	}
	return nil
}
