package graph

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/internal/dmctest"
	"github.com/dmc-project/dmc/model"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// benchWeights returns the real stories260K weights when present, else random weights of the
// named preset (throughput does not depend on the values).
func benchWeights(b *testing.B, name string) *model.Weights {
	if name == "stories260K" {
		if _, err := os.Stat(dmctest.AssetPath("tinyllamas-stories260K/stories260K.bin")); err == nil {
			w, err := checkpoints.ReadLlama2C(dmctest.AssetPath("tinyllamas-stories260K/stories260K.bin"))
			if err != nil {
				b.Fatal(err)
			}
			return w
		}
		// Same shapes as the real checkpoint (throughput does not depend on the values).
		c := model.Config{Name: "stories260K-shape", Dim: 64, HiddenDim: 172, NLayers: 5, NHeads: 8, NKVHeads: 4,
			VocabSize: 512, MaxSeqLen: 512, NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEInterleaved, TieEmbeddings: true}
		w, err := model.RandomParams[float32](c, 1)
		if err != nil {
			b.Fatal(err)
		}
		return w
	}
	c, err := model.Preset(name)
	if err != nil {
		b.Fatal(err)
	}
	w, err := model.RandomParams[float32](c, 1)
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// BenchmarkStep measures one training step (forward + backward) of the float32 graph and
// reports tokens/s and GFLOP/s (StepFLOPs). Run with -benchtime=3x; the BLAS is reported in the
// log (build with -tags openblas for OpenBLAS).
func BenchmarkStep(b *testing.B) {
	for _, bc := range []struct {
		model   string
		B, T    int
		dmcMode bool
	}{
		{"stories260K", 8, 256, true},
		{"stories260K", 8, 256, false},
		{"bench-20m", 4, 256, true},
		{"bench-20m", 4, 256, false},
	} {
		mode := "vanilla"
		if bc.dmcMode {
			mode = "dmc"
		}
		b.Run(bc.model+"/"+mode, func(b *testing.B) {
			w := benchWeights(b, bc.model)
			g, err := New(w, dmc.DefaultConfig(), bc.B, bc.T)
			if err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 1))
			seqs := make([][]int, bc.B)
			for i := range seqs {
				seqs[i] = randTokens(rng, bc.T, w.Config.VocabSize)
			}
			batch := makeBatch(seqs)
			sc := StepContext{Seed: 1, DMC: bc.dmcMode, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 1}
			if _, err := g.Step(batch, sc); err != nil { // build + compile + first allocation
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				sc.Step = i
				if _, err := g.Step(batch, sc); err != nil {
					b.Fatal(err)
				}
			}
			sec := time.Since(start).Seconds() / float64(b.N)
			b.ReportMetric(float64(bc.B*bc.T)/sec, "tokens/s")
			b.ReportMetric(StepFLOPs(w.Config, bc.B, bc.T)/sec/1e9, "GFLOP/s")
			b.Logf("BLAS %s, %d params, %.3f s/step", BLAS, w.Config.NumParams(), sec)
		})
	}
}

// BenchmarkForward measures the forward pass alone (evaluation), hard decisions.
func BenchmarkForward(b *testing.B) {
	w := benchWeights(b, "stories260K")
	const B, T = 8, 256
	g, err := New(w, dmc.DefaultConfig(), B, T)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	seqs := make([][]int, B)
	for i := range seqs {
		seqs[i] = randTokens(rng, T, w.Config.VocabSize)
	}
	batch := makeBatch(seqs)
	sc := StepContext{DMC: true, ZeroOut: 1, Hard: true}
	if _, err := g.Forward(batch, sc); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := g.Forward(batch, sc); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(B*T)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkSgemmPeak measures the float32 GEMM rate of the BLAS this binary uses (blas32, which
// -tags openblas points at OpenBLAS) on square matrices, with all cores: the denominator for
// BenchmarkStep's GFLOP/s ("% of Sgemm peak"). Run both in one command so they share the load.
// OpenBLAS runs with its own GOMAXPROCS threads here (the graph runs it single-threaded from
// one goroutine per core).
func BenchmarkSgemmPeak(b *testing.B) {
	defer blasThreads(runtime.GOMAXPROCS(0))()
	for _, n := range []int{512, 1024, 2048} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(2, 2))
			x, y, z := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
			for i := range x {
				x[i], y[i] = rng.Float32(), rng.Float32()
			}
			mat := func(d []float32) blas32.General { return blas32.General{Rows: n, Cols: n, Stride: n, Data: d} }
			blas32.Gemm(blas.NoTrans, blas.Trans, 1, mat(x), mat(y), 0, mat(z)) // warm-up (threads, pages)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				blas32.Gemm(blas.NoTrans, blas.Trans, 1, mat(x), mat(y), 0, mat(z))
			}
			b.ReportMetric(2*float64(n)*float64(n)*float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			b.Logf("BLAS %s", BLAS)
		})
	}
}
