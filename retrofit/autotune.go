package retrofit

import (
	"context"
	"fmt"
	"io"
	"math"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

// channelAblationFLOPs bounds the automatic channel choice: about a minute of CPU forward
// passes. Larger models measure fewer tokens, or keep the recipe's channel and say so.
const (
	channelAblationFLOPs  = 3e11
	channelAblationTokens = 4096
	channelAblationMin    = 1024
)

// autoTune resolves the recipe's automatic DMC settings for a fresh run: decision_offset from
// the target CR, decision_channel by measuring on the training data what removing each
// candidate channel costs the base model. On resume the run's own values (model.json) are
// reused, so the recipe stays the one the run started with.
func autoTune(ctx context.Context, r *trainer.Recipe, w *model.Weights, ds *data.Dataset, runDir string, resume bool, progress io.Writer) error {
	if r.Mode != trainer.ModeDMC || !(r.AutoChannel || r.AutoOffset) {
		return nil
	}
	if resume {
		if rd, err := OpenRun(runDir); err == nil && rd.Model.DMC != nil {
			if r.AutoChannel {
				r.DecisionChannel = rd.Model.DMC.DecisionChannel
			}
			if r.AutoOffset {
				r.DecisionOffset = rd.Model.DMC.DecisionOffset
			}
			return nil
		}
	}
	if r.AutoOffset {
		r.DecisionOffset = dmc.AutoDecisionOffset(r.TargetCR)
		fmt.Fprintf(progress, "decision offset %g (auto_offset: merges %.1f%% of tokens at the start of stage 2, for CR %g)\n",
			r.DecisionOffset, 100/(1+math.Exp(r.DecisionOffset)), r.TargetCR)
	}
	if !r.AutoChannel {
		return nil
	}
	cfg := w.Config
	channels := candidateChannels(cfg.HeadDim())
	tokens := min(channelAblationTokens, int(channelAblationFLOPs/(2*float64(cfg.NumParams())*float64(len(channels)+1))))
	if tokens < channelAblationMin {
		fmt.Fprintf(progress, "decision channel %d (auto_channel skipped: the model is too large to measure on the CPU; run dmc eval --tasks channels and set decision_channel)\n",
			r.DecisionChannel)
		return nil
	}
	fmt.Fprintf(progress, "auto_channel: measuring what removing each of %d q/k channels costs the base model (%d training tokens each)\n", len(channels), tokens)
	res, err := eval.ChannelAblationOf(ctx, w, channels, ds.Documents, eval.PPLOptions{MaxTokens: tokens}, nil)
	if err != nil {
		return fmt.Errorf("auto_channel: %w (set decision_channel in the recipe to skip the measurement)", err)
	}
	r.DecisionChannel = res.Recommended
	var worst eval.ChannelCost
	for _, c := range res.PerChannel {
		if c.Increase > worst.Increase {
			worst = c
		}
	}
	fmt.Fprintf(progress, "decision channel %d (auto_channel: removing it costs the base model %+.1f%% perplexity on %d training tokens; the worst of %d candidates, channel %d, %+.1f%%)\n",
		res.Recommended, 100*costOf(res, res.Recommended), res.Tokens, len(channels), worst.Channel, 100*worst.Increase)
	return nil
}

// candidateChannels are the channels the automatic choice measures: all of a small head, else
// the ends of both RoPE halves (the fastest and slowest rotating pairs of the interleaved and
// rotate-half layouts).
func candidateChannels(D int) []int {
	if D <= 16 {
		out := make([]int, D)
		for i := range out {
			out[i] = i
		}
		return out
	}
	return []int{0, 1, D/2 - 2, D/2 - 1, D / 2, D/2 + 1, D - 2, D - 1}
}

func costOf(r *eval.ChannelAblationResult, c int) float64 {
	for _, x := range r.PerChannel {
		if x.Channel == c {
			return x.Increase
		}
	}
	return 0
}
