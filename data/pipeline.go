package data

import (
	"sync"
	"sync/atomic"
)

// Documents are handed to the tokenising workers in batches of this many documents or
// bytes of text, whichever comes first.
const (
	pipeBatchDocs  = 256
	pipeBatchBytes = 1 << 20
)

// tokenPipe tokenises documents on several goroutines and hands their token ids to write in
// input order, so the output does not depend on the number of workers. The caller adds
// documents from one goroutine; write runs on one goroutine of the pipe's. Memory holds at
// most about 3·workers batches. With one worker everything runs in the caller, in turn.
type tokenPipe struct {
	encode func(dst []int32, text string) []int32
	write  func(split string, ids []int32) error

	buf []int32 // the single-worker encoding buffer

	cur        *docBatch
	work       chan *docBatch // to the workers
	order      chan *docBatch // to the writer, in input order
	writerDone chan struct{}
	failed     chan struct{} // closed at the writer's first error
	err        error         // that error; set before failed is closed
	stop       atomic.Bool   // the caller gave up: skip what is left
	workers    sync.WaitGroup
	closed     bool
}

type docBatch struct {
	texts  []string
	splits []string
	ids    [][]int32
	bytes  int
	ready  chan struct{} // closed when ids is filled
}

func newTokenPipe(workers int, encode func(dst []int32, text string) []int32, write func(split string, ids []int32) error) *tokenPipe {
	p := &tokenPipe{encode: encode, write: write}
	if workers <= 1 {
		return p
	}
	p.work = make(chan *docBatch)
	p.order = make(chan *docBatch, 2*workers)
	p.writerDone = make(chan struct{})
	p.failed = make(chan struct{})
	for range workers {
		p.workers.Add(1)
		go p.worker()
	}
	go p.writer()
	return p
}

func (p *tokenPipe) worker() {
	defer p.workers.Done()
	for b := range p.work {
		b.ids = make([][]int32, len(b.texts))
		for i, t := range b.texts {
			if p.stop.Load() {
				break
			}
			b.ids[i] = p.encode(nil, t)
		}
		b.texts = nil
		close(b.ready)
	}
}

func (p *tokenPipe) writer() {
	defer close(p.writerDone)
	for b := range p.order {
		<-b.ready
		if p.err != nil || p.stop.Load() {
			continue // drain, so that the caller never blocks
		}
		for i, ids := range b.ids {
			if err := p.write(b.splits[i], ids); err != nil {
				p.err = err
				close(p.failed)
				break
			}
		}
	}
}

// add queues one document for split. It returns the writer's error, if any, so that the
// caller stops reading.
func (p *tokenPipe) add(text, split string) error {
	if p.work == nil {
		p.buf = p.encode(p.buf[:0], text)
		return p.write(split, p.buf)
	}
	if p.cur == nil {
		p.cur = &docBatch{ready: make(chan struct{})}
	}
	b := p.cur
	b.texts = append(b.texts, text)
	b.splits = append(b.splits, split)
	b.bytes += len(text)
	if len(b.texts) >= pipeBatchDocs || b.bytes >= pipeBatchBytes {
		return p.flush()
	}
	return nil
}

func (p *tokenPipe) flush() error {
	b := p.cur
	if b == nil {
		return nil
	}
	p.cur = nil
	select {
	case p.order <- b:
	case <-p.failed:
		return p.err
	}
	p.work <- b // the workers always take work, so this never blocks for long
	return nil
}

// close writes what is queued and stops the goroutines; with abort (the caller failed) the
// queued documents are dropped. It returns the writer's error. It may be called again.
func (p *tokenPipe) close(abort bool) error {
	if p.work == nil || p.closed {
		return p.err
	}
	p.closed = true
	var err error
	if abort {
		p.stop.Store(true)
	} else {
		err = p.flush()
	}
	close(p.order)
	close(p.work)
	<-p.writerDone
	p.workers.Wait()
	if err == nil {
		err = p.err
	}
	return err
}
