package trainer

import (
	"context"
	"fmt"
	"os"
	"os/signal"
)

// A CLI wires Ctrl-C to the run's context: on interruption Run saves a checkpoint of the last
// completed step and returns with Result.Interrupted set; rerunning with Resume continues it.
func ExampleRun() {
	recipe, err := LoadRecipe("default")
	if err != nil {
		panic(err)
	}
	// Normally from flags (Overrides.Register) or a --set key=value list.
	if err := recipe.ApplyOverrides([]string{"zero_out_steps=2", "ramp_steps_per_cr=4", "fine_tune_steps=2",
		"seq_len=8", "batch_size=2", "checkpoint_every=0"}); err != nil {
		panic(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	dir, _ := os.MkdirTemp("", "dmc-run")
	defer os.RemoveAll(dir)
	res, err := Run(ctx, Options{
		RunDir: dir, Recipe: recipe,
		Model: newFakeModel(7, 4, 1), Source: &fakeSource{V: 7, SeqLen: 8},
		OnZeroOutEnd: zeroDecisionChannel, // the model's own hook in real use
	})
	fmt.Println(res.Step, res.Done, res.Interrupted, res.Checkpoint, err)
	// Output: 8 true false step-0000008 <nil>
}
