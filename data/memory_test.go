package data

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkStreamLargeCorpus writes a synthetic corpus of DMC_BENCH_TOKENS int32 tokens
// (default 250M, about 1 GB of shards) and streams it once through a shuffling Packer,
// reporting the peak Go heap. Run it alone:
//
//	go test ./data -run '^$' -bench StreamLargeCorpus -benchtime 1x
func BenchmarkStreamLargeCorpus(b *testing.B) {
	total := int64(250_000_000)
	if s := os.Getenv("DMC_BENCH_TOKENS"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		total = v
	}
	dir := b.TempDir()
	w := newShardWriter(dir, SplitTrain, DefaultShardBytes, 1<<20)
	if err := os.MkdirAll(dir+"/"+SplitTrain, 0o755); err != nil {
		b.Fatal(err)
	}
	rng := newSplitMix(1)
	doc := make([]int32, 0, 4096)
	var written int64
	start := time.Now()
	for written < total {
		n := 64 + rng.intn(2000)
		doc = doc[:0]
		doc = append(doc, 1)
		for i := 1; i < n; i++ {
			doc = append(doc, int32(rng.next()%32000))
		}
		if err := w.add(doc); err != nil {
			b.Fatal(err)
		}
		written += int64(n)
	}
	split, err := w.finish()
	if err != nil {
		b.Fatal(err)
	}
	var bytes int64
	for _, s := range split.Shards {
		bytes += s.Bytes
	}
	b.Logf("wrote %d tokens, %d docs, %d shards, %.2f GB in %v", split.Tokens, split.Docs, len(split.Shards), float64(bytes)/1e9, time.Since(start))

	for b.Loop() {
		runtime.GC()
		var peakHeap, peakSys atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // sample the heap while streaming
			defer wg.Done()
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peakHeap.Load() {
					peakHeap.Store(ms.HeapInuse)
				}
				if ms.Sys > peakSys.Load() {
					peakSys.Store(ms.Sys)
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		ds, err := Open(dir + "/" + SplitTrain)
		if err != nil {
			b.Fatal(err)
		}
		const seqLen = 2048
		p, err := NewPacker(ds, PackerOptions{SeqLen: seqLen, Shuffle: true, Seed: 1, Epochs: 1})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		windows := 0
		for _, err := range p.Windows() {
			if err != nil {
				b.Fatal(err)
			}
			windows++
		}
		elapsed := time.Since(t0)
		p.Close()
		close(stop)
		wg.Wait()
		if want := int((split.Tokens - 1) / seqLen); windows != want {
			b.Fatalf("%d windows, want %d", windows, want)
		}
		b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(peakSys.Load())/(1<<20), "peak-sys-MiB")
		b.ReportMetric(float64(split.Tokens)/elapsed.Seconds()/1e6, "Mtok/s")
		b.Logf("streamed %d windows of %d tokens in %v; peak heap in use %.1f MiB, peak Go sys %.1f MiB",
			windows, seqLen+1, elapsed, float64(peakHeap.Load())/(1<<20), float64(peakSys.Load())/(1<<20))
	}
}
