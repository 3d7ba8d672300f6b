package cli

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progressLine rewrites one status line on a terminal-like writer at most a few times a second.
type progressLine struct {
	mu    sync.Mutex
	w     io.Writer
	unit  string
	start time.Time
	last  time.Time
	shown bool
}

func newProgressLine(w io.Writer, unit string) *progressLine {
	return &progressLine{w: w, unit: unit, start: time.Now()}
}

func (p *progressLine) update(n int) {
	p.printf(func() string {
		return fmt.Sprintf("%d %s (%.0f/s)", n, p.unit, float64(n)/max(time.Since(p.start).Seconds(), 1e-9))
	})
}

// printf rewrites the line with line(), at most twice a second (so short work stays quiet).
func (p *progressLine) printf(line func() string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 500*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "\r  %s   ", line())
	p.shown = true
}

// updateOf shows n of total with the rate and the time left.
func (p *progressLine) updateOf(n, total int) {
	p.printf(func() string {
		el := max(time.Since(p.start).Seconds(), 1e-9)
		rate := float64(n) / el
		eta := ""
		if n > 0 && total > n {
			eta = fmt.Sprintf(", ETA %s", (time.Duration(float64(total-n) / rate * float64(time.Second))).Round(time.Second))
		}
		return fmt.Sprintf("%d/%d %s (%.1f/s%s)", n, total, p.unit, rate, eta)
	})
}

// done ends the line and restarts the clock for the next piece of work.
func (p *progressLine) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprintln(p.w)
	}
	p.shown, p.start, p.last = false, time.Now(), time.Time{}
}
