package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"sync"
	"syscall"

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

// signalContext is cancelled by SIGINT or SIGTERM; caught reports which arrived (nil if none),
// so an interrupted command exits 128+signal as shells expect (130 for Ctrl-C, 143 for SIGTERM).
func signalContext(parent context.Context) (ctx context.Context, stop func(), caught func() os.Signal) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	var mu sync.Mutex
	var got os.Signal
	go func() {
		select {
		case s := <-ch:
			mu.Lock()
			got = s
			mu.Unlock()
			cancel()
		case <-ctx.Done():
		}
	}()
	stop = func() { signal.Stop(ch); cancel() }
	caught = func() os.Signal {
		mu.Lock()
		defer mu.Unlock()
		return got
	}
	return ctx, stop, caught
}

// interrupted is the error of a command stopped by sig: its message, and exit status 128+sig.
func interrupted(sig os.Signal, msg string) error {
	code := 130
	if s, ok := sig.(syscall.Signal); ok {
		code = 128 + int(s)
	}
	return &exitError{code: code, err: errors.New(msg)}
}

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
	// DMC_CPUPROFILE=FILE writes a Go CPU profile of the command (go tool pprof FILE).
	if path := os.Getenv("DMC_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil {
			if err = pprof.StartCPUProfile(f); err == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			} else {
				f.Close()
			}
		}
		if err != nil {
			fmt.Fprintf(errw, "dmc: DMC_CPUPROFILE: %v\n", err)
		}
	}
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
