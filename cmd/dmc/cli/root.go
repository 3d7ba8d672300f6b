package cli

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/spf13/cobra"
)

// IO are the streams a command reads and writes; tests inject buffers.
type IO struct {
	In       io.Reader
	Out, Err io.Writer
}

var constructors []func(*IO) *cobra.Command

// register adds a top-level command constructor (called from init in each command file).
func register(f func(*IO) *cobra.Command) { constructors = append(constructors, f) }

// NewRoot builds the dmc command tree.
func NewRoot(streams *IO) *cobra.Command {
	root := &cobra.Command{
		Use:   "dmc",
		Short: "Retrofit Llama models with Dynamic Memory Compression, evaluate, export and serve them",
		Long: `dmc retrofits Llama-family models with Dynamic Memory Compression (arXiv 2403.09636):
each layer and KV head learns to merge new keys/values into the last cache slot, shrinking
the KV cache 2-8x while keeping quality.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)
	var cmds []*cobra.Command
	for _, f := range constructors {
		cmds = append(cmds, f(streams))
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	root.AddCommand(cmds...)
	return root
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs the CLI and returns the process exit status. Errors are printed once, prefixed
// with "dmc:", and never as a panic trace.
func Main(args []string, in io.Reader, out, errw io.Writer) (code int) {
	streams := &IO{In: in, Out: out, Err: errw}
	root := NewRoot(streams)
	root.SetArgs(args)
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(errw, "dmc: internal error: %v\n(this is a bug; please report it with the command you ran)\n", r)
			code = 2
		}
	}()
	if err := root.Execute(); err != nil {
		fmt.Fprintf(errw, "dmc: %v\n", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}
