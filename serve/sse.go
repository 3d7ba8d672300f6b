package serve

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// sseStream writes server-sent events ("data: JSON\n\n", then "data: [DONE]\n\n") for the
// goroutines of one request. Each write has a deadline; the first failed write (a client that
// went away or stopped reading) cancels the request and ends the stream.
type sseStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	cancel  func()
	mu      sync.Mutex
	err     error
}

func newSSE(w http.ResponseWriter, timeout time.Duration, cancel func()) *sseStream {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	return &sseStream{w: w, rc: http.NewResponseController(w), timeout: timeout, cancel: cancel}
}

func (s *sseStream) write(line string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	if _, err := io.WriteString(s.w, line); err != nil {
		s.err = err
	} else if err := s.rc.Flush(); err != nil {
		s.err = err
	}
	if s.err != nil {
		s.cancel()
	}
	return s.err
}

// send writes one event holding v as JSON.
func (s *sseStream) send(v any) error {
	b, _ := json.Marshal(v)
	return s.write(fmt.Sprintf("data: %s\n\n", b))
}

// done ends a stream that is still open.
func (s *sseStream) done() { _ = s.write("data: [DONE]\n\n") }

// failed reports whether a write has failed.
func (s *sseStream) failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}
