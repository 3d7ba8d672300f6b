package dmc

import (
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestNoiseDeterminism: the noise is a pure function of (key, index), every key field matters,
// and At agrees with Fill.
func TestNoiseDeterminism(t *testing.T) {
	base := NoiseKey{Seed: 1, Step: 100, Rank: 0, MicroBatch: 2, Layer: 3}
	a, b := make([]float64, 257), make([]float64, 257)
	base.Fill(a)
	base.Fill(b)
	for i := range a {
		if a[i] != b[i] || a[i] != base.At(uint64(i)) {
			t.Fatalf("element %d: Fill %g / %g, At %g", i, a[i], b[i], base.At(uint64(i)))
		}
		if math.IsNaN(a[i]) || math.IsInf(a[i], 0) {
			t.Fatalf("element %d is %g", i, a[i])
		}
	}
	variants := map[string]NoiseKey{}
	for name, edit := range map[string]func(*NoiseKey){
		"seed": func(k *NoiseKey) { k.Seed++ }, "step": func(k *NoiseKey) { k.Step++ },
		"rank": func(k *NoiseKey) { k.Rank++ }, "micro-batch": func(k *NoiseKey) { k.MicroBatch++ },
		"layer": func(k *NoiseKey) { k.Layer++ },
		// Swapping two fields must not give the same stream.
		"swap step/micro-batch": func(k *NoiseKey) { k.Step, k.MicroBatch = k.MicroBatch, k.Step },
	} {
		k := base
		edit(&k)
		variants[name] = k
	}
	for name, k := range variants {
		c := make([]float64, len(a))
		k.Fill(c)
		same := 0
		for i := range a {
			if a[i] == c[i] {
				same++
			}
		}
		if same > 0 {
			t.Fatalf("changing %s leaves %d of %d noise values unchanged", name, same, len(a))
		}
	}
}

// TestNoiseDistribution: logistic(0, 1) has mean 0, variance π²/3 and CDF σ(x).
func TestNoiseDistribution(t *testing.T) {
	const n = 200000
	x := make([]float64, n)
	NoiseKey{Seed: 42, Step: 7}.Fill(x)
	var mean, m2 float64
	below := map[float64]int{-2: 0, 0: 0, 1: 0}
	for _, v := range x {
		mean += v
		m2 += v * v
		for thr := range below {
			if v < thr {
				below[thr]++
			}
		}
	}
	mean /= n
	variance := m2/n - mean*mean
	if math.Abs(mean) > 0.02 || math.Abs(variance-math.Pi*math.Pi/3) > 0.05 {
		t.Fatalf("mean %g variance %g, want 0 and %g", mean, variance, math.Pi*math.Pi/3)
	}
	for thr, c := range below {
		if got := float64(c) / n; math.Abs(got-Sigmoid(thr)) > 0.005 {
			t.Fatalf("P(noise < %g) = %g, want %g", thr, got, Sigmoid(thr))
		}
	}
}

// TestNoiseGolden pins the derivation documented on NoiseKey: a change would silently break
// the resume of existing training runs. Refresh with go test ./dmc -run NoiseGolden -update.
func TestNoiseGolden(t *testing.T) {
	type entry struct {
		Key   NoiseKey
		Index uint64
		Value float64
	}
	var got []entry
	for _, k := range []NoiseKey{{}, {Seed: 1}, {Seed: 1, Step: 250, Rank: 1, MicroBatch: 3, Layer: 4}} {
		for _, i := range []uint64{0, 1, 1000} {
			got = append(got, entry{k, i, k.At(i)})
		}
	}
	path := filepath.Join("testdata", "noise_golden.json")
	if *update {
		b, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	var want []entry
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if len(want) != len(got) {
		t.Fatalf("golden has %d entries, computed %d", len(want), len(got))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("noise %+v: got %v, golden %v", got[i].Key, got[i].Value, want[i].Value)
		}
	}
}

// TestNoiseFirstValueByHand recomputes one value step by step from the documented derivation.
func TestNoiseFirstValueByHand(t *testing.T) {
	mix := func(z uint64) uint64 {
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	const g = 0x9e3779b97f4a7c15
	k := NoiseKey{Seed: 5, Step: 6, Rank: 7, MicroBatch: 8, Layer: 9}
	h := mix(5 + g)
	for _, f := range []uint64{6, 7, 8, 9} {
		h = mix(h ^ mix(f+g))
	}
	gamma := uint64(g)
	x := mix(h + 3*gamma) // element index 2: wraps mod 2^64
	u := (float64(x>>11) + 0.5) / (1 << 53)
	if want := math.Log(u / (1 - u)); math.Abs(k.At(2)-want) > 1e-12 {
		t.Fatalf("At(2) = %v, derivation gives %v", k.At(2), want)
	}
}
