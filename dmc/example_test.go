package dmc_test

import (
	"fmt"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// A DMC cache drops into the reference forward in place of the vanilla cache. Random weights
// never learned to compress, so this example forces 4× per head: a benchmark setting that must
// be labelled as such.
func ExampleCompressedCache() {
	mc, _ := model.Preset("demo-small")
	p, _ := model.RandomParams[float32](mc, 1)
	four := dmc.ForcedCR(func(layer, kvHead int) float64 { return 4 })
	cache, err := dmc.NewCompressedCache[float32](mc, dmc.DefaultConfig(), dmc.WithForcedDecisions(four))
	if err != nil {
		panic(err)
	}
	tokens := make([]int, 64)
	for i := range tokens {
		tokens[i] = (7 * i) % mc.VocabSize
	}
	if _, err := model.New(p).Forward(cache, tokens, 0, false); err != nil {
		panic(err)
	}
	fmt.Printf("forced=%v CR %.1f, %d slots for %d tokens × %d layers × %d KV heads\n",
		cache.Forced(), cache.CR(), cache.TotalSlots(), len(tokens), mc.NLayers, mc.NKVHeads)
	// Output: forced=true CR 4.0, 128 slots for 64 tokens × 4 layers × 2 KV heads
}

// The compression target ramps linearly during stage 2; the CR loss pushes the mean merge
// rate up to α* = 1 − 1/CR and does not penalise compressing more.
func ExampleTargetCR() {
	for _, step := range []int{0, 300, 600, 900} {
		cr := dmc.TargetCR(step, 600, 4)
		alpha := dmc.TargetAlpha(cr)
		fmt.Printf("step %d: CR %.2f α* %.3f loss at ᾱ=0.5: %.3f\n", step, cr, alpha, dmc.CRLoss([]float64{0.5}, alpha))
	}
	// Output:
	// step 0: CR 1.00 α* 0.000 loss at ᾱ=0.5: 0.000
	// step 300: CR 2.50 α* 0.600 loss at ᾱ=0.5: 0.100
	// step 600: CR 4.00 α* 0.750 loss at ᾱ=0.5: 0.250
	// step 900: CR 4.00 α* 0.750 loss at ᾱ=0.5: 0.250
}

// ParallelForward is the training form; with hard decisions it matches the cache exactly.
func ExampleParallelForward() {
	mc, _ := model.Preset("demo-small")
	p, _ := model.RandomParams[float64](mc, 1)
	cfg := dmc.DefaultConfig()
	tokens := []int{1, 5, 9, 200, 3, 77}
	par, _ := dmc.ParallelForward(p, cfg, tokens, true)
	cache, _ := dmc.NewCompressedCache[float64](mc, cfg)
	seq, _ := model.New(p).Forward(cache, tokens, 0, true)
	var maxDiff float64
	for i := range par {
		maxDiff = max(maxDiff, par[i]-seq[i], seq[i]-par[i])
	}
	fmt.Println("logits agree to 1e-12:", maxDiff < 1e-12)
	// Output: logits agree to 1e-12: true
}
