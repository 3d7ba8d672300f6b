package model

import (
	"math"
	"testing"
)

// The batched LogProbs of the CPU decoder equals scoring token by token through Prefill and
// Decode (LogProbsByDecoding, what the CUDA engine uses), and greedy Prefill/Decode follow
// the argmax of those logits.
func TestCPUDecoderLogProbsMatchDecoding(t *testing.T) {
	cfg := Config{Dim: 32, HiddenDim: 64, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 50, MaxSeqLen: 32,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: RoPEHalf, TieEmbeddings: true}
	w, err := RandomParams[float32](cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	d := NewCPUDecoder(w, func() (KVCache[float32], error) { return NewVanillaCache[float32](cfg), nil })
	tokens := []int{1, 5, 9, 2, 44, 17, 3, 30}
	batched, err := d.LogProbs(tokens)
	if err != nil {
		t.Fatal(err)
	}
	stepwise, err := LogProbsByDecoding(d, tokens)
	if err != nil {
		t.Fatal(err)
	}
	if len(batched) != len(tokens)-1 || len(stepwise) != len(batched) {
		t.Fatalf("lengths %d and %d, want %d", len(batched), len(stepwise), len(tokens)-1)
	}
	for i := range batched {
		if batched[i] > 0 || math.Abs(batched[i]-stepwise[i]) > 1e-5 {
			t.Errorf("token %d: batched %v, step by step %v", i+1, batched[i], stepwise[i])
		}
	}
	if len(d.seqs) != 0 {
		t.Errorf("%d sequences left active after scoring", len(d.seqs))
	}
	ids, next, logits, err := d.Prefill([][]int{tokens[:3]}, true)
	if err != nil {
		t.Fatal(err)
	}
	if next[0] != Argmax(logits[0]) {
		t.Errorf("greedy next %d, argmax of the logits %d", next[0], Argmax(logits[0]))
	}
	if _, _, err := d.Decode(ids, []int{4, 5}, false); err == nil {
		t.Error("Decode with more tokens than sequences: want an error")
	}
	if err := d.Release(ids...); err != nil || d.Release(ids...) == nil {
		t.Errorf("release once: %v; a second release must fail", err)
	}
}

// DecodeScore is Decode plus LogSoftmaxAt, and refuses bad targets.
func TestCPUDecodeScore(t *testing.T) {
	cfg := Config{Dim: 16, HiddenDim: 32, NLayers: 1, NHeads: 2, NKVHeads: 1, VocabSize: 20, MaxSeqLen: 16, NormEps: 1e-5, RopeTheta: 10000, RoPE: RoPEHalf}
	w, err := RandomParams[float32](cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	newDec := func() *CPUDecoder {
		return NewCPUDecoder(w, func() (KVCache[float32], error) { return NewVanillaCache[float32](cfg), nil })
	}
	a, b := newDec(), newDec()
	ia, _, _, _ := a.Prefill([][]int{{1, 2}, {3}}, false)
	ib, _, _, _ := b.Prefill([][]int{{1, 2}, {3}}, false)
	next, logits, err := a.Decode(ia, []int{4, 5}, true)
	if err != nil {
		t.Fatal(err)
	}
	nextS, lp, err := b.DecodeScore(ib, []int{4, 5}, []int{7, 19})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{LogSoftmaxAt(logits[0], 7), LogSoftmaxAt(logits[1], 19)} {
		if lp[i] != want || nextS[i] != next[i] {
			t.Errorf("row %d: log p %g next %d, Decode gives %g %d", i, lp[i], nextS[i], want, next[i])
		}
	}
	for _, bad := range [][]int{{7}, {7, 20}, {-1, 3}} {
		if _, _, err := b.DecodeScore(ib, []int{4, 5}, bad); err == nil {
			t.Errorf("targets %v accepted", bad)
		}
	}
}
