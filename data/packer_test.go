package data

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// packTestData prepares n distinct documents of varied length into many small shards and
// batches, and returns the directory and the documents' token ids.
func packTestData(t testing.TB, n int) (string, [][]int) {
	t.Helper()
	dir := t.TempDir()
	rng := newSplitMix(99)
	var docs []string
	for i := range n {
		docs = append(docs, fmt.Sprintf("doc%d:%s", i, strings.Repeat("x", rng.intn(40))))
	}
	in := writeFile(t, filepath.Join(dir, "in.txt"), strings.Join(docs, DefaultSeparator))
	out := filepath.Join(dir, "out")
	if _, err := Prepare(PrepareOptions{Inputs: []string{in}, Out: out, Tokenizer: byteTokenizer{},
		ShardBytes: 2000, batchTokens: 100}); err != nil {
		t.Fatal(err)
	}
	return out, encodeAll(byteTokenizer{}, docs, false)
}

func openPacker(t testing.TB, dir string, opts PackerOptions) *Packer {
	t.Helper()
	ds, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPacker(ds, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func take(t testing.TB, p *Packer, n int) [][]int {
	t.Helper()
	var out [][]int
	for len(out) < n || n < 0 {
		w, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, w.Tokens)
	}
	return out
}

// stitch undoes the packing: windows overlap by one token.
func stitch(windows [][]int) []int {
	var s []int
	for i, w := range windows {
		if i == 0 {
			s = append(s, w...)
		} else {
			s = append(s, w[1:]...)
		}
	}
	return s
}

func TestPackerSequential(t *testing.T) {
	dir, docs := packTestData(t, 120)
	ds, _ := Open(dir)
	if ds.NumBatches() < 10 || len(ds.Shards()) < 3 {
		t.Fatalf("test data too coarse: %d shards, %d batches", len(ds.Shards()), ds.NumBatches())
	}
	var all []int
	for _, d := range docs {
		all = append(all, d...)
	}
	for _, seqLen := range []int{1, 7, 64, len(all) - 1} {
		p := openPacker(t, dir, PackerOptions{SeqLen: seqLen, Epochs: 1})
		ws := take(t, p, -1)
		if want := (len(all) - 1) / seqLen; len(ws) != want {
			t.Fatalf("seqLen %d: %d windows, want %d", seqLen, len(ws), want)
		}
		for i, w := range ws {
			if !reflect.DeepEqual(w, all[i*seqLen:i*seqLen+seqLen+1]) {
				t.Fatalf("seqLen %d window %d differs from the concatenated documents", seqLen, i)
			}
		}
		win := Window{Tokens: ws[0]}
		if len(win.Inputs()) != seqLen || !reflect.DeepEqual(win.Targets(), all[1:seqLen+1]) {
			t.Fatal("Inputs/Targets are not the window shifted by one")
		}
	}
}

// splitDocs cuts a packed stream back into documents at BOS (id 1, unique in this data),
// each rendered as a string key without its BOS.
func splitDocs(stream []int) []string {
	var out []string
	start := -1
	for i, t := range stream {
		if t == 1 {
			if start >= 0 {
				out = append(out, docKey(stream[start+1:i]))
			}
			start = i
		}
	}
	if start >= 0 {
		out = append(out, docKey(stream[start+1:]))
	}
	return out
}

func docKey(ids []int) string { return fmt.Sprint(ids) }

func TestPackerShuffle(t *testing.T) {
	dir, docs := packTestData(t, 150)
	opts := PackerOptions{SeqLen: 16, Shuffle: true, Seed: 5, GroupBatches: 3, Epochs: 2}
	a := take(t, openPacker(t, dir, opts), -1)
	b := take(t, openPacker(t, dir, opts), -1)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed gave different windows")
	}
	opts.Seed = 6
	c := take(t, openPacker(t, dir, opts), -1)
	if reflect.DeepEqual(a, c) {
		t.Fatal("different seeds gave the same windows")
	}
	// Each epoch is a permutation of the documents (every one exactly once), and the two
	// epochs are in different orders.
	opts.Seed, opts.Epochs = 5, 1
	var want []string
	for _, d := range docs {
		want = append(want, docKey(d[1:]))
	}
	slices.Sort(want)
	epoch0 := splitDocs(stitch(take(t, openPacker(t, dir, opts), -1)))
	// The stream stops at the last full window, so the final document may be cut short.
	lastFull := epoch0[:len(epoch0)-1]
	got := append([]string{}, lastFull...)
	slices.Sort(got)
	missing := 0
	for _, w := range want {
		if _, ok := slices.BinarySearch(got, w); !ok {
			missing++
		}
	}
	if missing != 1 || len(got) != len(want)-1 {
		t.Fatalf("epoch 0 holds %d whole documents with %d of %d missing; want all but the cut last one", len(got), missing, len(want))
	}
	inOrder := true
	for i := range lastFull {
		if lastFull[i] != docKey(docs[i][1:]) {
			inOrder = false
		}
	}
	if inOrder {
		t.Fatal("shuffle left the documents in storage order")
	}
}

func TestPackerResume(t *testing.T) {
	dir, _ := packTestData(t, 100)
	for _, shuffle := range []bool{false, true} {
		opts := PackerOptions{SeqLen: 10, Shuffle: shuffle, Seed: 3, GroupBatches: 2, Epochs: 3}
		all := take(t, openPacker(t, dir, opts), -1)
		for _, k := range []int{0, 1, 17, len(all) / 3, len(all)/3 + 1, len(all) - 1, len(all)} {
			p := openPacker(t, dir, opts)
			first := take(t, p, k)
			saved, err := json.Marshal(p.Position())
			if err != nil {
				t.Fatal(err)
			}
			var pos Position
			if err := json.Unmarshal(saved, &pos); err != nil {
				t.Fatal(err)
			}
			if pos.Windows != int64(k) {
				t.Errorf("position counts %d windows, want %d", pos.Windows, k)
			}
			resumed := opts
			resumed.Resume = &pos
			rest := take(t, openPacker(t, dir, resumed), -1)
			if got := append(first, rest...); !reflect.DeepEqual(got, all) {
				t.Fatalf("shuffle=%v: resuming after %d of %d windows diverged (%d windows after resume)", shuffle, k, len(all), len(rest))
			}
		}
		// Another seed cannot resume this position.
		p := openPacker(t, dir, opts)
		take(t, p, 5)
		pos := p.Position()
		other := opts
		other.Seed, other.Shuffle, other.Resume = 4, true, &pos
		ds, _ := Open(dir)
		if _, err := NewPacker(ds, other); err == nil || !strings.Contains(err.Error(), "other shuffle settings") {
			t.Fatalf("resume with other settings: %v", err)
		}
	}
}

func TestPackerIteratorAndErrors(t *testing.T) {
	dir, _ := packTestData(t, 30)
	p := openPacker(t, dir, PackerOptions{SeqLen: 8, Epochs: 1})
	n := 0
	for w, err := range p.Windows() {
		if err != nil {
			t.Fatal(err)
		}
		if len(w.Tokens) != 9 {
			t.Fatalf("window of %d tokens", len(w.Tokens))
		}
		n++
	}
	if n == 0 || int64(n) != p.Position().Windows {
		t.Fatalf("%d windows, position says %d", n, p.Position().Windows)
	}
	ds, _ := Open(dir)
	if _, err := NewPacker(ds, PackerOptions{SeqLen: 0}); err == nil {
		t.Fatal("sequence length 0 accepted")
	}
	bad := Position{Group: 1 << 20}
	bad.Check = openPacker(t, dir, PackerOptions{SeqLen: 8}).Position().Check
	if _, err := NewPacker(ds, PackerOptions{SeqLen: 8, Resume: &bad}); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Fatalf("out-of-range position: %v", err)
	}
}
