//go:build dmc_cuda

package ops

// Conformance of the CUDA training kernels (package kernels, cuda_train*.go) with the Go kernels
// of this package: random inputs from fixed seeds, the Go kernel run in float64 as the oracle
// (and in float32 where bit equality is claimed), every device output poisoned with NaN before
// its launch, forward and every backward output compared by ‖got−want‖/‖want‖ with the
// tolerance of its precision (fp32 kernels 1e-5, bf16-operand GEMMs 1e-2 against the fp32
// inputs and 1e-5 against the bf16-rounded inputs). Skips without a GPU.
//
//	go test -c -tags dmc_cuda -o ops.test ./graph/ops && ./ops.test -test.run Conformance -test.v

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

const (
	tolF32       = 1e-5 // fp32 kernels against the float64 oracle
	tolBF16      = 1e-2 // bf16-operand GEMMs against the fp32 inputs' product
	tolBF16Exact = 1e-5 // the same GEMMs against the product of the bf16-rounded inputs
)

type convRow struct {
	name     string
	rel, abs float64
	tol      float64
	note     string
}

type convSuite struct {
	t    *testing.T
	dev  *kernels.TrainDevice
	rng  *rand.Rand
	rows []convRow
	bufs []*kernels.DevBuf
}

func TestCUDATrainConformance(t *testing.T) {
	dev, err := kernels.OpenTrain(0)
	if err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
	t.Logf("device: %s", dev.Describe())
	s := &convSuite{t: t, dev: dev, rng: rand.New(rand.NewPCG(12, 2026))}
	defer func() {
		for _, b := range s.bufs {
			b.Free()
		}
	}()
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Linear", s.testLinear}, {"RMSNorm", s.testRMSNorm}, {"RoPE", s.testRoPE}, {"SwiGLU", s.testSwiGLU},
		{"Embedding", s.testEmbedding}, {"SoftmaxCE", s.testSoftmaxCE}, {"SoftmaxKL", s.testSoftmaxKL},
		{"DMCDecide", s.testDecide}, {"DMCImportance", s.testImportance}, {"DMCHardCount", s.testHardCount},
		{"DMCMerge", s.testMerge}, {"Attention", s.testAttention}, {"EW", s.testEW}, {"Rows", s.testRows}, {"AdamW", s.testAdamW},
	} {
		c := c
		t.Run(c.name, func(t *testing.T) {
			s.t = t
			c.fn(t)
			if err := dev.Sync(); err != nil {
				t.Fatalf("device error after %s: %v", c.name, err)
			}
		})
	}
	s.t = t
	// Summary: worst error per output kind.
	worst := map[string]convRow{}
	var keys []string
	for _, r := range s.rows {
		k := r.name
		if i := strings.Index(k, " "); i > 0 {
			k = k[:i]
		}
		w, ok := worst[k]
		if !ok {
			keys = append(keys, k)
		}
		if !ok || r.rel > w.rel || (r.rel == w.rel && r.abs > w.abs) {
			worst[k] = r
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "worst case per output (%d comparisons):\n", len(s.rows))
	for _, k := range keys {
		r := worst[k]
		fmt.Fprintf(&b, "  %-28s rel %.2e  maxabs %.2e  tol %.0e  %s\n", k, r.rel, r.abs, r.tol, r.note)
	}
	t.Log(b.String())
}

// ---- helpers

func (s *convSuite) up(x []float32) *kernels.DevBuf {
	b, err := s.dev.FromF32(x)
	if err != nil {
		s.t.Fatal(err)
	}
	s.bufs = append(s.bufs, b)
	return b
}

func (s *convSuite) upIDs(x []int) *kernels.DevBuf {
	v := make([]int32, len(x))
	for i, id := range x {
		v[i] = int32(id)
	}
	b, err := s.dev.FromI32(v)
	if err != nil {
		s.t.Fatal(err)
	}
	s.bufs = append(s.bufs, b)
	return b
}

func (s *convSuite) alloc(dt kernels.DType, n int) *kernels.DevBuf {
	b, err := s.dev.Alloc(dt, n)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := b.Poison(); err != nil {
		s.t.Fatal(err)
	}
	s.bufs = append(s.bufs, b)
	return b
}

// out is a NaN-poisoned fp32 output.
func (s *convSuite) out(n int) *kernels.DevBuf { return s.alloc(kernels.F32, n) }

func (s *convSuite) down(b *kernels.DevBuf) []float32 {
	v, err := b.F32s()
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

func (s *convSuite) ok(err error) {
	s.t.Helper()
	if err != nil {
		s.t.Fatal(err)
	}
}

func (s *convSuite) normals(n int, std, mean float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(mean + std*s.rng.NormFloat64())
	}
	return v
}

func to64(x []float32) []float64 {
	v := make([]float64, len(x))
	for i, f := range x {
		v[i] = float64(f)
	}
	return v
}

// relErr is ‖got−want‖/‖want‖ (‖got−want‖ when want = 0) and the largest |got−want|; NaN or Inf
// in got (an element left unwritten) gives +Inf.
func relErr(got []float32, want []float64) (rel, abs float64) {
	if len(got) != len(want) {
		return math.Inf(1), math.Inf(1)
	}
	var num, den float64
	for i, g := range got {
		if math.IsNaN(float64(g)) || math.IsInf(float64(g), 0) {
			return math.Inf(1), math.Inf(1)
		}
		d := float64(g) - want[i]
		num += d * d
		den += want[i] * want[i]
		abs = max(abs, math.Abs(d))
	}
	if den == 0 {
		return math.Sqrt(num), abs
	}
	return math.Sqrt(num / den), abs
}

func (s *convSuite) check(name string, got []float32, want []float64, tol float64) {
	s.t.Helper()
	rel, abs := relErr(got, want)
	s.rows = append(s.rows, convRow{name: name, rel: rel, abs: abs, tol: tol})
	if !(rel <= tol) {
		s.t.Errorf("%s: relative error %.3g (max abs %.3g) exceeds %.0e", name, rel, abs, tol)
	}
}

// checkScaled is check with the error taken relative to the norm of ref (for a want that is
// zero up to rounding).
func (s *convSuite) checkScaled(name string, got []float32, want, ref []float64, tol float64) {
	s.t.Helper()
	_, abs := relErr(got, want)
	var num, den float64
	if len(got) != len(want) {
		num = math.Inf(1)
		got = nil
	}
	for i, g := range got {
		d := float64(g) - want[i]
		num += d * d
	}
	for _, r := range ref {
		den += r * r
	}
	rel := math.Sqrt(num / max(den, 1e-300))
	if math.IsNaN(rel) {
		rel = math.Inf(1)
	}
	s.rows = append(s.rows, convRow{name: name, rel: rel, abs: abs, tol: tol})
	if !(rel <= tol) {
		s.t.Errorf("%s: error %.3g relative to the reference scale (max abs %.3g) exceeds %.0e", name, rel, abs, tol)
	}
}

// plus64 is a + b elementwise in float64.
func plus64(a []float32, b []float64) []float64 {
	out := to64(a)
	for i := range out {
		out[i] += b[i]
	}
	return out
}

// sumDiff counts elements where got ≠ x + y in float32 (equal values: +0 and −0 match).
func sumDiff(got, x, y []float32) int {
	if len(got) != len(x) || len(x) != len(y) {
		return max(len(got), len(x), len(y))
	}
	n := 0
	for i := range got {
		if w := x[i] + y[i]; got[i] != w && !(math.IsNaN(float64(w)) && math.IsNaN(float64(got[i]))) {
			n++
		}
	}
	return n
}

// bitDiff counts elements whose bits differ.
func bitDiff(a, b []float32) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			n++
		}
	}
	return n
}

// exact checks bit equality with the Go float32 kernel; required says whether a difference fails.
func (s *convSuite) exact(name string, got, want []float32, required bool) {
	s.t.Helper()
	n := bitDiff(got, want)
	note := fmt.Sprintf("bit-identical to Go float32: %d/%d differ", n, len(want))
	if len(s.rows) > 0 {
		s.rows[len(s.rows)-1].note = note
	}
	s.t.Logf("%s: %s", name, note)
	if required && n != 0 {
		s.t.Errorf("%s: %d of %d elements differ in bits from the Go float32 kernel", name, n, len(want))
	}
}

// bf16 rounds to the nearest bfloat16 (ties to even), as __float2bfloat16_rn.
func bf16(x float32) float32 {
	b := math.Float32bits(x)
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}

func bf16s(x []float32) []float32 {
	v := make([]float32, len(x))
	for i, f := range x {
		v[i] = bf16(f)
	}
	return v
}

func scale64(x []float64, c float64) []float64 {
	v := make([]float64, len(x))
	for i, f := range x {
		v[i] = f * c
	}
	return v
}

// ---- ops

func (s *convSuite) testLinear(t *testing.T) {
	defer func(tune bool) { s.dev.TuneGEMM = tune }(s.dev.TuneGEMM)
	cache := filepath.Join(t.TempDir(), "gemm-algos.json") // where the tuned shapes' choices go
	t.Setenv("DMC_GEMM_CACHE", cache)
	// tune: shapes no other test uses, so that their cuBLASLt plans are made, and tuned
	// (TrainDevice.TuneGEMM), here; the β = 1 calls below must still accumulate into their C.
	for _, sh := range []struct {
		n, in, out int
		tune       bool
	}{{5, 24, 8, false}, {13, 100, 36, false}, {37, 64, 48, false}, {256, 512, 384, false}, {1024, 1024, 512, false},
		{40, 72, 56, true}, {520, 264, 136, true}} {
		s.dev.TuneGEMM = sh.tune
		x, w, dy := s.normals(sh.n*sh.in, 1, 0), s.normals(sh.out*sh.in, 0.05, 0), s.normals(sh.n*sh.out, 1, 0)
		acc0 := s.normals(sh.out*sh.in, 1, 0)
		ref := func(x, w, dy []float32) (y, dx, dw []float64) {
			x64, w64, dy64 := to64(x), to64(w), to64(dy)
			y, dx, dw = make([]float64, sh.n*sh.out), make([]float64, sh.n*sh.in), make([]float64, sh.out*sh.in)
			gemm(false, true, sh.n, sh.out, sh.in, 1, x64, sh.in, w64, sh.in, 0, y, sh.out)
			gemm(false, false, sh.n, sh.in, sh.out, 1, dy64, sh.out, w64, sh.in, 0, dx, sh.in)
			gemm(true, false, sh.out, sh.in, sh.n, 1, dy64, sh.out, x64, sh.in, 0, dw, sh.in)
			return
		}
		y, dx, dw := ref(x, w, dy)
		yb, dxb, dwb := ref(bf16s(x), bf16s(w), bf16s(dy))
		cast := func(v []float32) *kernels.DevBuf {
			b := s.alloc(kernels.BF16, len(v))
			s.ok(s.dev.CastBF16(b, s.up(v)))
			return b
		}
		x16, w16, dy16 := cast(x), cast(w), cast(dy)
		if sh.tune { // a shape's first call tunes it: with β = 1 it must still add into its C
			dA := s.up(acc0)
			s.ok(s.dev.LinearBackwardW(dA, dy16, x16, sh.n, sh.in, sh.out, true))
			s.check(fmt.Sprintf("Linear.dW+= tuning call %dx%dx%d", sh.n, sh.in, sh.out), s.down(dA), plus64(acc0, dwb), tolBF16Exact)
		}
		for _, noLt := range []bool{false, true} {
			s.dev.NoLt = noLt
			tag := fmt.Sprintf("%dx%dx%d lt=%t tune=%t", sh.n, sh.in, sh.out, !noLt, sh.tune)
			dY, dX, dW := s.out(len(y)), s.out(len(dx)), s.out(len(dw))
			s.ok(s.dev.LinearForward(dY, x16, w16, sh.n, sh.in, sh.out, false))
			s.ok(s.dev.LinearBackwardX(dX, dy16, w16, sh.n, sh.in, sh.out, false))
			s.ok(s.dev.LinearBackwardW(dW, dy16, x16, sh.n, sh.in, sh.out, false))
			gy, gdx, gdw := s.down(dY), s.down(dX), s.down(dW)
			s.check("Linear.y "+tag, gy, y, tolBF16)
			s.check("Linear.dx "+tag, gdx, dx, tolBF16)
			s.check("Linear.dW "+tag, gdw, dw, tolBF16)
			s.check("Linear.y(bf16-in) "+tag, gy, yb, tolBF16Exact)
			s.check("Linear.dx(bf16-in) "+tag, gdx, dxb, tolBF16Exact)
			s.check("Linear.dW(bf16-in) "+tag, gdw, dwb, tolBF16Exact)
			// Gradient accumulation: dW = acc0 + dyᵀx with beta = 1.
			dA := s.up(acc0)
			s.ok(s.dev.LinearBackwardW(dA, dy16, x16, sh.n, sh.in, sh.out, true))
			s.check("Linear.dW+=(bf16-in) "+tag, s.down(dA), plus64(acc0, dwb), tolBF16Exact)
			// The folded gradient sum (graph/device foldSums): dx = x0 + dy·W with beta = 1.
			x0 := s.normals(len(dx), 1, 0)
			dXA := s.up(x0)
			s.ok(s.dev.LinearBackwardX(dXA, dy16, w16, sh.n, sh.in, sh.out, true))
			s.check("Linear.dx+=(bf16-in) "+tag, s.down(dXA), plus64(x0, dxb), tolBF16Exact)
			// Determinism: the same call again gives the same bits.
			s.ok(s.dev.LinearForward(dY, x16, w16, sh.n, sh.in, sh.out, false))
			s.ok(s.dev.LinearBackwardW(dW, dy16, x16, sh.n, sh.in, sh.out, false))
			if n := bitDiff(s.down(dY), gy) + bitDiff(s.down(dW), gdw); n != 0 {
				t.Errorf("Linear %s: a repeated GEMM differs in %d elements", tag, n)
			}
		}
		s.dev.NoLt = false
	}
	// the tuned shapes' GEMMs are kept for later runs (those for which cuBLASLt offers more
	// than one algorithm: the larger shape's at least)
	var doc struct {
		Devices map[string]map[string]string `json:"devices"`
	}
	b, err := os.ReadFile(cache)
	s.ok(err)
	s.ok(json.Unmarshal(b, &doc))
	kept := 0
	for _, m := range doc.Devices {
		kept += len(m)
	}
	if len(doc.Devices) != 1 || kept < 1 {
		t.Errorf("the GEMM algorithm cache has %d devices and %d shapes, want one device and some shapes", len(doc.Devices), kept)
	}
	t.Logf("GEMM algorithm cache: %d shapes tuned", kept)
}

func (s *convSuite) testRMSNorm(t *testing.T) {
	const eps = 1e-5
	// 12256 and 12288: the widest rows of the one-pass dx+dw kernel and the first past it
	for _, sh := range []struct{ rows, d int }{{1, 8}, {3, 64}, {7, 100}, {5, 4096}, {130, 256}, {300, 33}, {3, 12256}, {2, 12288}} {
		x, w, dy := s.normals(sh.rows*sh.d, 3, 0), s.normals(sh.d, 1, 0), s.normals(sh.rows*sh.d, 1, 0)
		x64, w64, dy64 := to64(x), to64(w), to64(dy)
		y, dx, dw := make([]float64, len(x)), make([]float64, len(x)), make([]float64, sh.d)
		rmsNormFwd(y, x64, w64, eps)
		rmsNormBwdX(dx, x64, w64, dy64, eps)
		rmsNormBwdW(dw, x64, dy64, eps)
		bx, bw, bdy := s.up(x), s.up(w), s.up(dy)
		gy, gy16, gdx, gdw := s.out(len(x)), s.alloc(kernels.BF16, len(x)), s.out(len(x)), s.out(sh.d)
		s.ok(s.dev.RMSNormForward(gy, gy16, bx, bw, sh.rows, sh.d, eps))
		s.ok(s.dev.RMSNormBackward(gdx, gdw, bx, bw, bdy, sh.rows, sh.d, eps, false))
		tag := fmt.Sprintf("%dx%d", sh.rows, sh.d)
		yv := s.down(gy)
		s.check("RMSNorm.y "+tag, yv, y, tolF32)
		s.check("RMSNorm.dx "+tag, s.down(gdx), dx, tolF32)
		s.check("RMSNorm.dw "+tag, s.down(gdw), dw, tolF32)
		bits := make([]uint16, len(x))
		s.ok(gy16.Download(bits))
		for i, b := range bits {
			if math.Float32frombits(uint32(b)<<16) != bf16(yv[i]) {
				t.Fatalf("RMSNorm %s: bf16 output %d is %#x, want bf16(%g)", tag, i, b, yv[i])
			}
		}
		// the bf16 output alone (no fp32 y): the same bits
		only16 := s.alloc(kernels.BF16, len(x))
		s.ok(s.dev.RMSNormForward(nil, only16, bx, bw, sh.rows, sh.d, eps))
		if n := s.castDiff(only16, gy); n != 0 {
			t.Errorf("RMSNorm %s: the bf16-only output differs from bf16(y) in %d elements", tag, n)
		}
		// dx alone, with its bf16 copy: the same bits
		xdx, xdx16 := s.out(len(x)), s.alloc(kernels.BF16, len(x))
		s.ok(s.dev.RMSNormBackwardX(xdx, xdx16, bx, bw, bdy, sh.rows, sh.d, eps, false))
		if n := bitDiff(s.down(xdx), s.down(gdx)) + s.castDiff(xdx16, gdx); n != 0 {
			t.Errorf("RMSNormBackwardX %s: %d elements differ from RMSNormBackward's dx and its bf16 cast", tag, n)
		}
		// dx added into another gradient (a folded sum): x0 + dx exactly, with and without the
		// bf16 copy of the sum
		x0 := s.normals(len(x), 1, 0)
		bx0, bx1, sum16 := s.up(x0), s.up(x0), s.alloc(kernels.BF16, len(x))
		s.ok(s.dev.RMSNormBackwardX(bx0, nil, bx, bw, bdy, sh.rows, sh.d, eps, true))
		s.ok(s.dev.RMSNormBackwardX(bx1, sum16, bx, bw, bdy, sh.rows, sh.d, eps, true))
		if n := sumDiff(s.down(bx0), x0, s.down(gdx)) + bitDiff(s.down(bx1), s.down(bx0)) + s.castDiff(sum16, bx0); n != 0 {
			t.Errorf("RMSNormBackwardX (add) %s: %d elements differ from x0 + dx and its bf16 cast", tag, n)
		}
		// dx and dw in one pass: the bits of the two-pass kernels, with and without the sum into
		// dx, the bf16 copy and the accumulation into dw
		fdx, fdx16, fdw := s.out(len(x)), s.alloc(kernels.BF16, len(x)), s.out(sh.d)
		s.ok(s.dev.RMSNormBackwardXW(fdx, fdx16, fdw, bx, bw, bdy, sh.rows, sh.d, eps, false, false))
		dwOnce := s.down(fdw)
		if n := bitDiff(s.down(fdx), s.down(gdx)) + s.castDiff(fdx16, gdx) + bitDiff(dwOnce, s.down(gdw)); n != 0 {
			t.Errorf("RMSNormBackwardXW %s: %d elements differ from RMSNormBackward's dx, dw and the bf16 cast", tag, n)
		}
		fx0, fsum16 := s.up(x0), s.alloc(kernels.BF16, len(x))
		s.ok(s.dev.RMSNormBackwardXW(fx0, fsum16, fdw, bx, bw, bdy, sh.rows, sh.d, eps, true, true))
		if n := bitDiff(s.down(fx0), s.down(bx1)) + s.castDiff(fsum16, bx1); n != 0 {
			t.Errorf("RMSNormBackwardXW (add) %s: %d elements differ from RMSNormBackwardX's sum and its bf16 cast", tag, n)
		}
		// dw only, accumulating.
		s.ok(s.dev.RMSNormBackward(nil, gdw, bx, bw, bdy, sh.rows, sh.d, eps, true))
		s.check("RMSNorm.dw+= "+tag, s.down(gdw), scale64(dw, 2), tolF32)
		if n := bitDiff(s.down(fdw), s.down(gdw)); n != 0 {
			t.Errorf("RMSNormBackwardXW (accumulating dw) %s: %d elements differ from RMSNormBackward's", tag, n)
		}
	}
}

func (s *convSuite) testRoPE(t *testing.T) {
	type rc struct {
		layout     model.RoPELayout
		H, D, T, B int
		ch         int
		sc, theta  float64
	}
	for _, c := range []rc{
		{model.RoPEInterleaved, 2, 8, 5, 2, -1, 1, 10000},
		{model.RoPEInterleaved, 3, 8, 16, 2, 7, 0.3, 10000},
		{model.RoPEHalf, 4, 64, 13, 3, 63, 0, 10000},
		{model.RoPEHalf, 2, 128, 33, 1, 5, 0.7, 500000},
		{model.RoPEInterleaved, 1, 64, 7, 2, 0, 2, 10000},
		{model.RoPEHalf, 8, 128, 9, 2, 127, 0.5, 10000},     // 512 pairs: two column blocks of tr_rope_rows
		{model.RoPEInterleaved, 5, 128, 3, 1, -1, 1, 10000}, // 320 pairs: a partial column block
	} {
		tab, err := s.dev.NewRoPETables(c.layout, c.theta, c.D, c.T)
		s.ok(err)
		for _, inv := range []bool{false, true} {
			spec := RoPESpec{Layout: c.layout, Theta: c.theta, Heads: c.H, HeadD: c.D, SeqLen: c.T, Channel: c.ch}
			o, err := newRoPEOp(spec, inv)
			s.ok(err)
			rows := c.B * c.T
			x := s.normals(rows*c.H*c.D, 1, 0)
			want, want32 := make([]float64, len(x)), make([]float32, len(x))
			ropeKernel(o, want, to64(x), c.sc)
			ropeKernel(o, want32, x, c.sc)
			got := s.out(len(x))
			s.ok(s.dev.RoPE(got, s.up(x), tab, rows, c.H, c.ch, c.sc, inv))
			g := s.down(got)
			name := fmt.Sprintf("RoPE.y %s H%d D%d T%d ch%d inv=%t", c.layout, c.H, c.D, c.T, c.ch, inv)
			s.check(name, g, want, tolF32)
			s.exact(name, g, want32, false)
			// with the bf16 copy, and the bf16 copy alone: the same bits
			bx := s.up(x)
			got2, y16, only16 := s.out(len(x)), s.alloc(kernels.BF16, len(x)), s.alloc(kernels.BF16, len(x))
			s.ok(s.dev.RoPE16(got2, y16, bx, tab, rows, c.H, c.ch, c.sc, inv))
			s.ok(s.dev.RoPE16(nil, only16, bx, tab, rows, c.H, c.ch, c.sc, inv))
			if n := bitDiff(s.down(got2), g) + s.castDiff(y16, got) + s.castDiff(only16, got); n != 0 {
				t.Errorf("%s: the bf16 outputs differ from bf16(y) in %d elements", name, n)
			}
		}
		tab.Free()
	}
}

// castDiff counts the elements of the bf16 buffer b16 that differ from CastBF16 of f32.
func (s *convSuite) castDiff(b16, f32 *kernels.DevBuf) int {
	n := f32.Len()
	ref := s.alloc(kernels.BF16, n)
	s.ok(s.dev.CastBF16(ref, f32))
	want, got := make([]uint16, n), make([]uint16, n)
	s.ok(ref.Download(want))
	s.ok(b16.Download(got))
	d := 0
	for i := range want {
		if want[i] != got[i] {
			d++
		}
	}
	return d
}

func (s *convSuite) testSwiGLU(t *testing.T) {
	for _, n := range []int{1, 1001, 1000, 3 * 4096} {
		a, b, dy := s.normals(n, 2, 0), s.normals(n, 1, 0), s.normals(n, 1, 0)
		a64, b64 := to64(a), to64(b)
		y, g := make([]float64, n), make([]float64, 2*n)
		swiGLUKernel(-1, y, a64, b64, nil)
		swiGLUKernel(1, g, a64, b64, to64(dy))
		ba, bb := s.up(a), s.up(b)
		gy, gda, gdb := s.out(n), s.out(n), s.out(n)
		s.ok(s.dev.SwiGLUForward(gy, nil, ba, bb))
		s.ok(s.dev.SwiGLUBackward(gda, gdb, nil, nil, ba, bb, s.up(dy)))
		tag := fmt.Sprint(n)
		// with the bf16 copies written by the kernel: the same da, db and bf16 of them
		xda, xdb, da16, db16 := s.out(n), s.out(n), s.alloc(kernels.BF16, n), s.alloc(kernels.BF16, n)
		s.ok(s.dev.SwiGLUBackward(xda, xdb, da16, db16, ba, bb, s.up(dy)))
		if d := bitDiff(s.down(xda), s.down(gda)) + bitDiff(s.down(xdb), s.down(gdb)) + s.castDiff(da16, gda) + s.castDiff(db16, gdb); d != 0 {
			t.Errorf("SwiGLU %s: the backward with bf16 copies differs in %d elements", tag, d)
		}
		s.check("SwiGLU.y "+tag, s.down(gy), y, tolF32)
		s.check("SwiGLU.da "+tag, s.down(gda), g[:n], tolF32)
		s.check("SwiGLU.db "+tag, s.down(gdb), g[n:], tolF32)
		if n%4 != 0 {
			continue
		}
		// The 16-byte kernels (n a multiple of 4, aligned buffers) and the scalar ones (views one
		// element in, so not 16-byte aligned) give the same bits, bf16 copy included.
		shifted := func(x []float32) *kernels.DevBuf { return s.up(append([]float32{0}, x...)).Slice(1, n) }
		wy16 := s.alloc(kernels.BF16, n)
		s.ok(s.dev.SwiGLUForward(gy, wy16, ba, bb))
		// the bf16 output alone (no fp32 out), 16-byte and scalar kernels: the same bits
		only16 := s.alloc(kernels.BF16, n+1)
		s.ok(s.dev.SwiGLUForward(nil, only16.Slice(0, n), ba, bb))
		if d := s.castDiff(only16.Slice(0, n), gy); d != 0 {
			t.Errorf("SwiGLU %s: the bf16-only output differs from bf16(y) in %d elements", tag, d)
		}
		s.ok(s.dev.SwiGLUForward(nil, only16.Slice(1, n), shifted(a), shifted(b)))
		if d := s.castDiff(only16.Slice(1, n), gy); d != 0 {
			t.Errorf("SwiGLU %s: the bf16-only output of the scalar kernel differs from bf16(y) in %d elements", tag, d)
		}
		sa, sb, sdy := shifted(a), shifted(b), shifted(dy)
		vy, vda, vdb := s.out(n+1).Slice(1, n), s.out(n+1).Slice(1, n), s.out(n+1).Slice(1, n)
		vy16 := s.alloc(kernels.BF16, n+1).Slice(1, n)
		s.ok(s.dev.SwiGLUForward(vy, vy16, sa, sb))
		vda16, vdb16 := s.alloc(kernels.BF16, n+1).Slice(1, n), s.alloc(kernels.BF16, n+1).Slice(1, n)
		s.ok(s.dev.SwiGLUBackward(vda, vdb, vda16, vdb16, sa, sb, sdy))
		n16 := s.castDiff(vda16, gda) + s.castDiff(vdb16, gdb)
		want16, got16 := make([]uint16, n), make([]uint16, n)
		s.ok(wy16.Download(want16))
		s.ok(vy16.Download(got16))
		for i := range want16 {
			if want16[i] != got16[i] {
				n16++
			}
		}
		if d := bitDiff(s.down(vy), s.down(gy)) + bitDiff(s.down(vda), s.down(gda)) + bitDiff(s.down(vdb), s.down(gdb)) + n16; d != 0 {
			t.Errorf("SwiGLU %s: the 16-byte and the scalar kernels differ in %d elements", tag, d)
		}
	}
}

func (s *convSuite) testEmbedding(t *testing.T) {
	for _, sh := range []struct{ V, d, n int }{{50, 24, 200}, {1000, 128, 64}, {7, 5, 1}} {
		table, dy := s.normals(sh.V*sh.d, 1, 0), s.normals(sh.n*sh.d, 1, 0)
		ids := make([]int, sh.n)
		ids32 := make([]int32, sh.n)
		for i := range ids {
			ids[i] = s.rng.IntN(sh.V)
			ids32[i] = int32(ids[i])
		}
		y, dE := make([]float64, sh.n*sh.d), make([]float64, sh.V*sh.d)
		gather(y, to64(table), ids, sh.d)
		scatterAdd(dE, to64(dy), ids, sh.d)
		dE32 := make([]float32, sh.V*sh.d)
		scatterAdd(dE32, dy, ids, sh.d)
		off, pos, err := kernels.EmbeddingIndex(ids32, sh.V)
		s.ok(err)
		boff, err := s.dev.FromI32(off)
		s.ok(err)
		bpos, err := s.dev.FromI32(pos)
		s.ok(err)
		s.bufs = append(s.bufs, boff, bpos)
		gy, gdE := s.out(len(y)), s.out(len(dE))
		s.ok(s.dev.EmbeddingForward(gy, s.up(table), s.upIDs(ids), sh.n, sh.d))
		s.ok(s.dev.EmbeddingBackward(gdE, s.up(dy), boff, bpos, sh.V, sh.d, false))
		tag := fmt.Sprintf("V%d d%d n%d", sh.V, sh.d, sh.n)
		s.check("Embedding.y "+tag, s.down(gy), y, 0)
		g := s.down(gdE)
		s.check("Embedding.dE "+tag, g, dE, tolF32)
		s.exact("Embedding.dE "+tag, g, dE32, true)
	}
	if _, _, err := kernels.EmbeddingIndex([]int32{3, 9}, 5); err == nil {
		t.Error("EmbeddingIndex accepted an id outside the vocabulary")
	}
}

// targets draws targets in [0, V) with about a fifth ignored (−1).
func (s *convSuite) targets(n, V int, ignoreAll bool) []int {
	tg := make([]int, n)
	for i := range tg {
		tg[i] = s.rng.IntN(V)
		if ignoreAll || s.rng.IntN(5) == 0 {
			tg[i] = -1
		}
	}
	return tg
}

func (s *convSuite) testSoftmaxCE(t *testing.T) {
	for _, sh := range []struct {
		n, V int
		none bool
	}{{37, 1000, false}, {8, 32000, false}, {3, 17, false}, {4, 64, true}} {
		logits := s.normals(sh.n*sh.V, 3, 0)
		tg := s.targets(sh.n, sh.V, sh.none)
		l64 := to64(logits)
		loss := xentKernel(l64, tg, sh.V, 0, nil)
		const g = 0.7
		dl := make([]float64, len(logits))
		xentKernel(l64, tg, sh.V, g, dl)
		bl, bt := s.up(logits), s.upIDs(tg)
		gl, gdl := s.out(2), s.out(len(logits))
		s.ok(s.dev.SoftmaxCE(gl, bl, bt, sh.n, sh.V))
		count := ValidTargets(tg)
		scale := float32(0)
		if count > 0 {
			scale = float32(g / float64(count))
		}
		s.ok(s.dev.SoftmaxCEBackward(gdl, bl, bt, sh.n, sh.V, scale, nil))
		tag := fmt.Sprintf("%dx%d counted %d", sh.n, sh.V, count)
		lv := s.down(gl)
		s.check("SoftmaxCE.loss "+tag, lv[:1], []float64{loss}, tolF32)
		if int(lv[1]) != count {
			t.Errorf("SoftmaxCE %s: device counted %v tokens", tag, lv[1])
		}
		s.check("SoftmaxCE.dlogits "+tag, s.down(gdl), dl, tolF32)
		// with the bf16 copy, and the bf16 copy alone: the same bits
		wdl, dl16, only16 := s.out(len(logits)), s.alloc(kernels.BF16, len(logits)), s.alloc(kernels.BF16, len(logits))
		s.ok(s.dev.SoftmaxCEBackward16(wdl, dl16, bl, bt, sh.n, sh.V, scale, nil))
		s.ok(s.dev.SoftmaxCEBackward16(nil, only16, bl, bt, sh.n, sh.V, scale, nil))
		if n := bitDiff(s.down(wdl), s.down(gdl)) + s.castDiff(dl16, gdl) + s.castDiff(only16, gdl); n != 0 {
			t.Errorf("SoftmaxCE %s: the bf16 outputs differ from bf16(dlogits) in %d elements", tag, n)
		}
		// The upstream gradient as a device scalar: scale 1/count times g on the device.
		if count > 0 {
			s.ok(s.dev.SoftmaxCEBackward(gdl, bl, bt, sh.n, sh.V, float32(1/float64(count)), s.up([]float32{g})))
			s.check("SoftmaxCE.dlogits(device g) "+tag, s.down(gdl), dl, tolF32)
		}
	}
}

func (s *convSuite) testSoftmaxKL(t *testing.T) {
	for _, sh := range []struct {
		n, V int
		none bool
	}{{37, 1000, false}, {8, 32000, false}, {5, 9, false}, {4, 64, true}} {
		logits := s.normals(sh.n*sh.V, 2, 0)
		teacher := make([]float32, len(logits))
		for i := range teacher {
			teacher[i] = logits[i] + float32(0.7*s.rng.NormFloat64())
		}
		tg := s.targets(sh.n, sh.V, sh.none)
		l64, t64 := to64(logits), to64(teacher)
		loss := klKernel(l64, t64, tg, sh.V, 0, nil)
		const g = 1.3
		dl := make([]float64, len(logits))
		klKernel(l64, t64, tg, sh.V, g, dl)
		bl, bte, bt := s.up(logits), s.up(teacher), s.upIDs(tg)
		gl, gdl := s.out(2), s.out(len(logits))
		s.ok(s.dev.SoftmaxKL(gl, bl, bte, bt, sh.n, sh.V))
		count := ValidTargets(tg)
		scale := float32(0)
		if count > 0 {
			scale = float32(g / float64(count))
		}
		s.ok(s.dev.SoftmaxKLBackward(gdl, bl, bte, bt, sh.n, sh.V, scale, nil))
		tag := fmt.Sprintf("%dx%d counted %d", sh.n, sh.V, count)
		lv := s.down(gl)
		s.check("SoftmaxKL.loss "+tag, lv[:1], []float64{loss}, tolF32)
		s.check("SoftmaxKL.dlogits "+tag, s.down(gdl), dl, tolF32)
		if count > 0 {
			s.ok(s.dev.SoftmaxKLBackward(gdl, bl, bte, bt, sh.n, sh.V, float32(1/float64(count)), s.up([]float32{g})))
			s.check("SoftmaxKL.dlogits(device g) "+tag, s.down(gdl), dl, tolF32)
		}
	}
}

var convSpecs = []DMCSpec{
	{QHeads: 8, KVHeads: 2, HeadD: 16, SeqLen: 13, Channel: 15, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.5, Window: 12},
	{QHeads: 4, KVHeads: 4, HeadD: 8, SeqLen: 29, Channel: 7, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1, Window: 12},
	{QHeads: 16, KVHeads: 2, HeadD: 64, SeqLen: 17, Channel: 63, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 1, Window: 0},
	{QHeads: 4, KVHeads: 1, HeadD: 128, SeqLen: 40, Channel: 0, DecisionOffset: 3, ImportanceOffset: 2, Temperature: 0.3, Window: 4},
	// a longer sequence, an odd head width with W = 1 (nothing merges), and W = 32
	{QHeads: 8, KVHeads: 2, HeadD: 64, SeqLen: 150, Channel: 63, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1, Window: 12},
	{QHeads: 3, KVHeads: 3, HeadD: 6, SeqLen: 70, Channel: 2, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1, Window: 1},
	{QHeads: 2, KVHeads: 1, HeadD: 32, SeqLen: 100, Channel: 31, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1, Window: 32},
	// head width 256 (two channel chunks per lane) and a window past a warp (the general merge)
	{QHeads: 2, KVHeads: 1, HeadD: 256, SeqLen: 33, Channel: 255, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.3, Window: 12},
	{QHeads: 4, KVHeads: 2, HeadD: 16, SeqLen: 90, Channel: 15, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1, Window: 40},
}

func geom(sp DMCSpec) kernels.DMCGeom {
	return kernels.DMCGeom{QHeads: sp.QHeads, KVHeads: sp.KVHeads, HeadD: sp.HeadD, SeqLen: sp.SeqLen, Channel: sp.Channel,
		DecisionOffset: sp.DecisionOffset, ImportanceOffset: sp.ImportanceOffset, Temperature: sp.Temperature, Window: sp.Window}
}

func specTag(sp DMCSpec) string {
	return fmt.Sprintf("Hq%d Hkv%d D%d T%d W%d", sp.QHeads, sp.KVHeads, sp.HeadD, sp.SeqLen, sp.Window)
}

// keys draws pre-RoPE keys whose decision channel sits around the offset (decisions both ways).
func (s *convSuite) keys(sp DMCSpec, rows, heads int) []float32 {
	k := s.normals(rows*heads*sp.HeadD, 1, 0)
	for r := 0; r < rows*heads; r++ {
		k[r*sp.HeadD+sp.Channel] = float32(sp.DecisionOffset + 2*s.rng.NormFloat64())
	}
	return k
}

func (s *convSuite) testDecide(t *testing.T) {
	for _, sp := range convSpecs {
		B := 3
		rows, H := B*sp.SeqLen, sp.KVHeads
		k, noise, dA := s.keys(sp, rows, H), s.normals(rows*H, 1, 0), s.normals(rows*H, 1, 0)
		bk, bn, bdA := s.up(k), s.up(noise), s.up(dA)
		for _, mode := range []DecisionMode{DecideSoft, DecideHard, DecideStraightThrough} {
			al, dk := make([]float64, rows*H), make([]float64, len(k))
			decideKernel(decideOp{sp, false}, al, to64(k), to64(noise), mode, nil)
			decideKernel(decideOp{sp, true}, dk, to64(k), to64(noise), mode, to64(dA))
			gal, gdk := s.out(len(al)), s.out(len(dk))
			s.ok(s.dev.DMCDecide(gal, bk, bn, geom(sp), rows, int(mode)))
			s.ok(s.dev.DMCDecideBackward(gdk, bk, bn, bdA, geom(sp), rows, int(mode)))
			tag := fmt.Sprintf("%s mode=%d", specTag(sp), mode)
			s.check("DMCDecide.alpha "+tag, s.down(gal), al, tolF32)
			s.check("DMCDecide.dk "+tag, s.down(gdk), dk, tolF32)
			// the folded form: the gradient added into another one, x + dk exactly
			x := s.normals(len(k), 1, 0)
			bx := s.up(x)
			s.ok(s.dev.DMCDecideBackwardAdd(bx, bk, bn, bdA, geom(sp), rows, int(mode)))
			if n := sumDiff(s.down(bx), x, s.down(gdk)); n != 0 {
				t.Errorf("DMCDecideBackwardAdd %s: %d elements differ from x + dk", tag, n)
			}
		}
	}
}

func (s *convSuite) testImportance(t *testing.T) {
	eps := dmc.Epsilon[float32]()
	for _, sp := range convSpecs {
		rows := 2 * sp.SeqLen
		q, dW := s.normals(rows*sp.QHeads*sp.HeadD, 3, 0), s.normals(rows*sp.KVHeads, 1, 0)
		om, dq := make([]float64, rows*sp.KVHeads), make([]float64, len(q))
		importanceKernel(importanceOp{sp, false}, om, to64(q), nil, eps)
		importanceKernel(importanceOp{sp, true}, dq, to64(q), to64(dW), eps)
		bq := s.up(q)
		gom, gdq := s.out(len(om)), s.out(len(dq))
		bW := s.up(dW)
		s.ok(s.dev.DMCImportance(gom, bq, geom(sp), rows, eps))
		s.ok(s.dev.DMCImportanceBackward(gdq, bq, bW, geom(sp), rows))
		s.check("DMCImportance.omega "+specTag(sp), s.down(gom), om, tolF32)
		s.check("DMCImportance.dq "+specTag(sp), s.down(gdq), dq, tolF32)
		x := s.normals(len(q), 1, 0)
		bx := s.up(x)
		s.ok(s.dev.DMCImportanceBackwardAdd(bx, bq, bW, geom(sp), rows))
		if n := sumDiff(s.down(bx), x, s.down(gdq)); n != 0 {
			t.Errorf("DMCImportanceBackwardAdd %s: %d elements differ from x + dq", specTag(sp), n)
		}
	}
}

func (s *convSuite) testHardCount(t *testing.T) {
	for _, sh := range []struct{ B, T, H int }{{3, 13, 2}, {1, 1, 1}, {4, 2048, 8}} {
		alpha := make([]float32, sh.B*sh.T*sh.H)
		for i := range alpha {
			alpha[i] = s.rng.Float32()
		}
		alpha[0] = 0.5 // not counted: the threshold is strict
		g := s.normals(sh.B, 1, 0)
		per := sh.T * sh.H
		cnt, dA := make([]float64, sh.B), make([]float64, len(alpha))
		o := hardCountOp{T: sh.T}
		hardCountKernel(o, cnt, to64(alpha), sh.H, nil)
		// g padded by one element: a one-element tensor would read back as a scalar.
		gv := tensor.New(tensor.WithShape(sh.B+1), tensor.WithBacking(append(to64(g), 0)))
		hardCountKernel(hardCountOp{T: sh.T, back: true}, dA, to64(alpha), sh.H, []G.Value{nil, gv})
		gc, gdA := s.out(sh.B), s.out(len(alpha))
		s.ok(s.dev.DMCHardCount(gc, s.up(alpha), sh.B, per))
		s.ok(s.dev.DMCHardCountBackward(gdA, s.up(g), sh.B, per))
		tag := fmt.Sprintf("B%d T%d H%d", sh.B, sh.T, sh.H)
		s.check("DMCHardCount.count "+tag, s.down(gc), cnt, 0)
		s.check("DMCHardCount.dalpha "+tag, s.down(gdA), dA, 0)
		// per (sequence, head): DMCHeadCount
		nh := sh.B * sh.H
		gh := s.normals(nh, 1, 0)
		hc, hdA := make([]float64, nh), make([]float64, len(alpha))
		hardCountKernel(hardCountOp{T: sh.T, perHead: true}, hc, to64(alpha), sh.H, nil)
		ghv := tensor.New(tensor.WithShape(nh+1), tensor.WithBacking(append(to64(gh), 0)))
		hardCountKernel(hardCountOp{T: sh.T, back: true, perHead: true}, hdA, to64(alpha), sh.H, []G.Value{nil, ghv})
		ghc, ghdA := s.out(nh), s.out(len(alpha))
		s.ok(s.dev.DMCHeadCount(ghc, s.up(alpha), sh.B, sh.T, sh.H))
		s.ok(s.dev.DMCHeadCountBackward(ghdA, s.up(gh), sh.B, sh.T, sh.H))
		s.check("DMCHeadCount.count "+tag, s.down(ghc), hc, 0)
		s.check("DMCHeadCount.dalpha "+tag, s.down(ghdA), hdA, 0)
	}
}

func (s *convSuite) testMerge(t *testing.T) {
	defer func(g, r bool) { s.dev.MergeGeneral, s.dev.MergeRows = g, r }(s.dev.MergeGeneral, s.dev.MergeRows)
	for _, sp := range convSpecs {
		for _, variant := range []string{"soft", "hard", "soft general", "soft rows", "hard rows"} {
			// the warp-window kernels (1 ≤ W ≤ 32), for the same shapes the general ones, and
			// the warp-window kernels with several rows per warp (head dimensions of 4k)
			mode := strings.Fields(variant)[0]
			s.dev.MergeGeneral = strings.HasSuffix(variant, "general")
			s.dev.MergeRows = strings.HasSuffix(variant, "rows")
			if s.dev.MergeGeneral && (sp.Window < 1 || sp.Window > 32) {
				continue
			}
			B := 2
			rows, H, D := B*sp.SeqLen, sp.KVHeads, sp.HeadD
			x, dy := s.normals(rows*H*D, 1, 0), s.normals(rows*H*D, 1, 0)
			alpha, omega := make([]float32, rows*H), make([]float32, rows*H)
			for i := range alpha {
				if mode == "hard" {
					alpha[i] = float32(s.rng.IntN(2))
				} else {
					alpha[i] = float32(dmc.Sigmoid(2 * s.rng.NormFloat64()))
				}
				omega[i] = float32(dmc.Sigmoid(s.rng.NormFloat64()) + 0x1p-23)
			}
			for b := 0; b < B; b++ { // α = 0 at the first position of each sequence, as DMCDecide gives
				for h := 0; h < H; h++ {
					alpha[b*sp.SeqLen*H+h] = 0
				}
			}
			N := rows
			y, packed := make([]float64, len(x)), make([]float64, N*H*D+2*N*H)
			mergeKernel(mergeOp{sp, false}, y, to64(x), to64(alpha), to64(omega), nil)
			mergeKernel(mergeOp{sp, true}, packed, to64(x), to64(alpha), to64(omega), to64(dy))
			bx, ba, bo := s.up(x), s.up(alpha), s.up(omega)
			gy, gdx, gdA, gdW := s.out(len(x)), s.out(len(x)), s.out(N*H), s.out(N*H)
			s.ok(s.dev.DMCMerge(gy, bx, ba, bo, geom(sp), rows))
			s.ok(s.dev.DMCMergeBackward(gdx, gdA, gdW, bx, ba, bo, s.up(dy), geom(sp), rows))
			tag := specTag(sp) + " " + variant
			if s.dev.MergeRows {
				// y and dx add the same products in the same order as the one-row kernels
				s.dev.MergeRows = false
				oy, odx, odA, odW := s.out(len(x)), s.out(len(x)), s.out(N*H), s.out(N*H)
				s.ok(s.dev.DMCMerge(oy, bx, ba, bo, geom(sp), rows))
				s.ok(s.dev.DMCMergeBackward(odx, odA, odW, bx, ba, bo, s.up(dy), geom(sp), rows))
				if n := bitDiff(s.down(gy), s.down(oy)) + bitDiff(s.down(gdx), s.down(odx)); n != 0 {
					t.Errorf("DMCMerge %s: the rows-per-warp kernels differ from the one-row kernels in %d elements of y and dx", tag, n)
				}
			}
			// with the bf16 copy, and the bf16 copy alone: the same bits
			wy, y16, only16 := s.out(len(x)), s.alloc(kernels.BF16, len(x)), s.alloc(kernels.BF16, len(x))
			s.ok(s.dev.DMCMerge16(wy, y16, bx, ba, bo, geom(sp), rows))
			s.ok(s.dev.DMCMerge16(nil, only16, bx, ba, bo, geom(sp), rows))
			if n := bitDiff(s.down(wy), s.down(gy)) + s.castDiff(y16, gy) + s.castDiff(only16, gy); n != 0 {
				t.Errorf("DMCMerge %s: the bf16 outputs differ from bf16(y) in %d elements", tag, n)
			}
			s.check("DMCMerge.y "+tag, s.down(gy), y, tolF32)
			s.check("DMCMerge.dx "+tag, s.down(gdx), packed[:N*H*D], tolF32)
			s.check("DMCMerge.dalpha "+tag, s.down(gdA), packed[N*H*D:N*H*D+N*H], tolF32)
			dW := packed[N*H*D+N*H:]
			if sp.Window == 1 {
				// A one-token window makes every merge a mean of one value: dω (and dα) are
				// exactly zero and the device's dω is rounding noise, measured against the scale
				// of dx instead.
				s.checkScaled("DMCMerge.domega "+tag, s.down(gdW), dW, packed[:N*H*D], tolF32)
			} else {
				s.check("DMCMerge.domega "+tag, s.down(gdW), dW, tolF32)
			}
		}
	}
}

// adamwCPU runs the trainer's own AdamW update (trainer.AdamW.Update) on one parameter at
// optimiser step step, with moments m and v updated in place.
func adamwCPU(w, g, m, v []float32, beta1, beta2, epsilon, wd, lr float64, step int, decay bool) {
	o := &trainer.AdamW{Beta1: beta1, Beta2: beta2, Eps: epsilon, WeightDecay: wd, T: step - 1,
		Decay: []bool{decay}, M: [][]float32{m}, V: [][]float32{v}}
	o.Update([]trainer.Param{{Name: "p", Shape: []int{len(w)}, Value: w}}, [][]float32{g}, lr)
}

func (s *convSuite) testAdamW(t *testing.T) {
	const beta1, beta2, eps, wd = 0.9, 0.95, 1e-8, 0.1
	for _, clipOn := range []bool{false, true} {
		n1, n2 := 10007, 300
		w1, w2 := s.normals(n1, 0.02, 0), s.normals(n2, 1, 1)
		m1, v1, m2, v2 := make([]float32, n1), make([]float32, n1), make([]float32, n2), make([]float32, n2)
		bw1, bw2, bm1, bv1, bm2, bv2 := s.up(w1), s.up(w2), s.up(m1), s.up(v1), s.up(m2), s.up(v2)
		w16 := s.alloc(kernels.BF16, n1)
		norm, clip := s.alloc(kernels.F64, 1), s.out(1)
		maxNorm := 0.0
		if clipOn {
			maxNorm = 1
		}
		for step := 1; step <= 3; step++ {
			lr := 1e-3 * float64(step)
			g1, g2 := s.normals(n1, 0.05, 0), s.normals(n2, 0.05, 0.01)
			bg1, bg2 := s.up(g1), s.up(g2)
			// CPU: trainer.ClipGlobalNorm then Update.
			var ss float64
			for _, g := range [][]float32{g1, g2} {
				for _, x := range g {
					ss += float64(x) * float64(x)
				}
			}
			nr := math.Sqrt(ss)
			if maxNorm > 0 && nr > maxNorm {
				sc := float32(maxNorm / nr)
				for _, g := range [][]float32{g1, g2} {
					for j := range g {
						g[j] *= sc
					}
				}
			}
			adamwCPU(w1, g1, m1, v1, beta1, beta2, eps, wd, lr, step, true)
			adamwCPU(w2, g2, m2, v2, beta1, beta2, eps, wd, lr, step, false)
			var clipBuf *kernels.DevBuf
			if clipOn {
				s.ok(s.dev.GlobalNorm(norm, clip, maxNorm, bg1, bg2))
				clipBuf = clip
				got := make([]float64, 1)
				s.ok(norm.Download(got))
				s.check(fmt.Sprintf("GlobalNorm step %d", step), []float32{float32(got[0])}, []float64{nr}, 1e-7)
				if d := math.Abs(got[0]-nr) / nr; d > 1e-12 {
					t.Errorf("GlobalNorm step %d: %v, want %v (float64 relative %.2g)", step, got[0], nr, d)
				}
			}
			h := kernels.AdamWStep{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: wd, LR: lr, Step: step, Decay: true}
			s.ok(s.dev.AdamW(bw1, w16, bg1, bm1, bv1, clipBuf, h))
			h.Decay = false
			s.ok(s.dev.AdamW(bw2, nil, bg2, bm2, bv2, clipBuf, h))
			tag := fmt.Sprintf("step %d clip=%t", step, clipOn)
			for _, c := range []struct {
				name string
				b    *kernels.DevBuf
				want []float32
			}{{"AdamW.w ", bw1, w1}, {"AdamW.m ", bm1, m1}, {"AdamW.v ", bv1, v1}, {"AdamW.w(nodecay) ", bw2, w2}, {"AdamW.v(nodecay) ", bv2, v2}} {
				got := s.down(c.b)
				s.check(c.name+tag, got, to64(c.want), tolF32)
				// Bit equality: the clip factor is float32(maxNorm/norm) of two norms that may
				// round apart in float64's last bit, so it is required only without clipping.
				s.exact(c.name+tag, got, c.want, !clipOn)
			}
			bits := make([]uint16, n1)
			s.ok(w16.Download(bits))
			wv := s.down(bw1)
			for i, b := range bits {
				if math.Float32frombits(uint32(b)<<16) != bf16(wv[i]) {
					t.Fatalf("AdamW: bf16 weight %d is %#x, want bf16(%g)", i, b, wv[i])
				}
			}
		}
	}
}

// testAttention compares the flash-style device attention with the Go kernel in float64 (GQA,
// odd lengths, masked with α containing exact 0s and 1s, unmasked), forward and backward, and
// checks that a repeated run gives the same bits.
func (s *convSuite) testAttention(t *testing.T) {
	for _, sh := range []struct {
		B, T, Hq, Hkv, D int
		masked           bool
	}{{2, 13, 8, 2, 16, true}, {1, 29, 4, 4, 8, false}, {3, 7, 4, 2, 4, true}, {1, 130, 16, 2, 64, true},
		{2, 67, 4, 1, 128, false}, {1, 200, 4, 1, 128, true}, {2, 257, 2, 2, 8, true}, {1, 1, 2, 1, 8, true},
		{2, 300, 4, 2, 32, true}} {
		N := sh.B * sh.T
		spec := AttnSpec{QHeads: sh.Hq, KVHeads: sh.Hkv, HeadD: sh.D, SeqLen: sh.T, Masked: sh.masked}
		q, k, v := s.normals(N*sh.Hq*sh.D, 1, 0), s.normals(N*sh.Hkv*sh.D, 1, 0), s.normals(N*sh.Hkv*sh.D, 1, 0)
		dO := s.normals(N*sh.Hq*sh.D, 1, 0)
		alpha := make([]float32, N*sh.Hkv)
		for i := range alpha {
			switch s.rng.IntN(6) {
			case 0:
				alpha[i] = 1 // a fully masked key
			case 1:
				alpha[i] = 0
			default:
				alpha[i] = float32(s.rng.Float64())
			}
		}
		dense := func(x []float32, shape ...int) G.Value {
			return tensor.New(tensor.WithShape(shape...), tensor.WithBacking(to64(x)))
		}
		in := []G.Value{dense(q, N, sh.Hq*sh.D), dense(k, N, sh.Hkv*sh.D), dense(v, N, sh.Hkv*sh.D)}
		if sh.masked {
			in = append(in, dense(alpha, N, sh.Hkv))
		}
		oWant := make([]float64, N*sh.Hq*sh.D)
		attnKernel[float64](attnOp{spec, false}, oWant, in)
		nPacked := N * (sh.Hq + 2*sh.Hkv) * sh.D
		if sh.masked {
			nPacked += N * sh.Hkv
		}
		packed := make([]float64, nPacked)
		attnKernel[float64](attnOp{spec, true}, packed, append(append([]G.Value{}, in...), dense(dO, N, sh.Hq*sh.D)))
		bq, bk, bv, bdO := s.up(q), s.up(k), s.up(v), s.up(dO)
		var ba, gdA *kernels.DevBuf
		if sh.masked {
			ba, gdA = s.up(alpha), s.out(N*sh.Hkv)
		}
		defer func(r bool) { s.dev.Attn32Rows = r }(s.dev.Attn32Rows)
		var tcO []float32 // the 16-row forward's output, which the 32-row kernel must equal bit for bit
		// the exact fp32 kernels, then the tensor-core ones with 16 and with 32 query rows per warp
		for variant := 0; variant < 3; variant++ {
			tc := variant > 0
			if tc && sh.D%16 != 0 {
				continue
			}
			s.dev.Attn32Rows = variant == 2
			g := kernels.AttnGeom{QHeads: sh.Hq, KVHeads: sh.Hkv, HeadD: sh.D, SeqLen: sh.T, TensorCores: tc}
			if sh.masked {
				gdA = s.out(N * sh.Hkv)
			}
			o, stats := s.out(N*sh.Hq*sh.D), s.out(2*N*sh.Hq)
			gdq, gdk, gdv := s.out(N*sh.Hq*sh.D), s.out(N*sh.Hkv*sh.D), s.out(N*sh.Hkv*sh.D)
			s.ok(s.dev.AttentionForward(o, stats, bq, bk, bv, ba, g, N))
			s.ok(s.dev.AttentionBackward(gdq, gdk, gdv, gdA, bq, bk, bv, ba, o, stats, bdO, g, N))
			tag := fmt.Sprintf("B%d T%d Hq%d Hkv%d D%d masked=%t tc=%t rows32=%t", sh.B, sh.T, sh.Hq, sh.Hkv, sh.D, sh.masked, tc, s.dev.Attn32Rows)
			nq, nk := N*sh.Hq*sh.D, N*sh.Hkv*sh.D
			tolAttn := 1e-5
			if tc {
				tolAttn = tolAttnTC
			}
			gotO := s.down(o)
			s.check("Attention.o "+tag, gotO, oWant, tolAttn)
			// Each 16-row fragment of the 32-row kernel runs the products of the 16-row kernel in
			// the same order; the extra tiles it visits are fully masked and add exact zeros.
			switch variant {
			case 1:
				tcO = gotO
			case 2:
				if n := bitDiff(gotO, tcO); n != 0 {
					t.Errorf("Attention %s: 16 and 32 rows per warp differ in %d output elements", tag, n)
				}
			}
			s.check("Attention.dq "+tag, s.down(gdq), packed[:nq], tolAttn)
			s.check("Attention.dk "+tag, s.down(gdk), packed[nq:nq+nk], tolAttn)
			s.check("Attention.dv "+tag, s.down(gdv), packed[nq+nk:nq+2*nk], tolAttn)
			var gotA []float32
			if sh.masked {
				gotA = s.down(gdA)
				s.check("Attention.dalpha "+tag, gotA, packed[nq+2*nk:], tolAttn)
			}
			s.ok(s.dev.AttentionForward(o, stats, bq, bk, bv, ba, g, N))
			s.ok(s.dev.AttentionBackward(gdq, gdk, gdv, gdA, bq, bk, bv, ba, o, stats, bdO, g, N))
			n := bitDiff(s.down(o), gotO)
			if sh.masked {
				n += bitDiff(s.down(gdA), gotA)
			}
			if n != 0 {
				t.Errorf("Attention %s: a repeated run differs in %d elements", tag, n)
			}
			if !tc {
				continue
			}
			// on bf16 operands the caller keeps (the executor's shadows): the same bits
			q16, k16, v16 := s.alloc(kernels.BF16, nq), s.alloc(kernels.BF16, nk), s.alloc(kernels.BF16, nk)
			s.ok(s.dev.CastBF16(q16, bq))
			s.ok(s.dev.CastBF16(k16, bk))
			s.ok(s.dev.CastBF16(v16, bv))
			o16, stats16 := s.out(nq), s.out(2*N*sh.Hq)
			dq16, dk16, dv16 := s.out(nq), s.out(nk), s.out(nk)
			var dA16 *kernels.DevBuf
			if sh.masked {
				dA16 = s.out(N * sh.Hkv)
			}
			s.ok(s.dev.AttentionForwardBF16(o16, stats16, q16, k16, v16, ba, g, N))
			s.ok(s.dev.AttentionBackwardBF16(dq16, dk16, dv16, dA16, q16, k16, v16, ba, o16, stats16, bdO, g, N))
			n = bitDiff(s.down(o16), gotO) + bitDiff(s.down(dq16), s.down(gdq)) + bitDiff(s.down(dk16), s.down(gdk)) + bitDiff(s.down(dv16), s.down(gdv))
			if sh.masked {
				n += bitDiff(s.down(dA16), gotA)
			}
			if n != 0 {
				t.Errorf("Attention %s: the bf16-operand entry points differ in %d elements", tag, n)
			}
			// δ and bf16(dO) in one coalesced pass (AttnDeltaRows): δ summed in another order,
			// so within the tolerance of the oracle rather than bit for bit
			prev := s.dev.AttnDeltaRows
			s.dev.AttnDeltaRows = true
			s.ok(s.dev.AttentionBackwardBF16(dq16, dk16, dv16, dA16, q16, k16, v16, ba, o16, stats16, bdO, g, N))
			s.dev.AttnDeltaRows = prev
			rtag := tag + " delta-rows"
			s.check("Attention.dq "+rtag, s.down(dq16), packed[:nq], tolAttn)
			s.check("Attention.dk "+rtag, s.down(dk16), packed[nq:nq+nk], tolAttn)
			s.check("Attention.dv "+rtag, s.down(dv16), packed[nq+nk:nq+2*nk], tolAttn)
			if sh.masked {
				s.check("Attention.dalpha "+rtag, s.down(dA16), packed[nq+2*nk:], tolAttn)
			}
		}
	}
}

// tolAttnTC bounds the tensor-core attention: q, k, v, dO, P and dS rounded to bf16 (8-bit
// mantissa, relative rounding 2⁻⁹) with fp32 accumulation.
const tolAttnTC = 2e-2

// testEW checks the element-wise ops of the loss head against Go, with scalar broadcasting.
// testRows: GatherRows and ScatterRows (a training selection's row subsets) copy exactly the
// listed rows and leave the other rows of the destination as they were; Scale multiplies in
// place. Odd widths and a row list out of order.
func (s *convSuite) testRows(t *testing.T) {
	for _, sh := range []struct{ rows, cols int }{{7, 5}, {300, 33}, {64, 1024}} {
		tag := fmt.Sprintf("%dx%d", sh.rows, sh.cols)
		full := s.normals(sh.rows*sh.cols, 1, 0)
		var pick []int
		for r := sh.rows - 1; r >= 0; r -= 3 {
			pick = append(pick, r)
		}
		ids := s.upIDs(pick)
		compact := s.out(len(pick) * sh.cols)
		s.ok(s.dev.GatherRows(compact, s.up(full), ids, len(pick), sh.cols))
		want := make([]float64, 0, len(pick)*sh.cols)
		for _, r := range pick {
			want = append(want, to64(full[r*sh.cols:(r+1)*sh.cols])...)
		}
		s.check("GatherRows "+tag, s.down(compact), want, 0)

		src := s.normals(len(pick)*sh.cols, 1, 0)
		dst := s.up(full) // the rows not listed must keep these values
		s.ok(s.dev.ScatterRows(dst, s.up(src), ids, len(pick), sh.cols))
		want = to64(full)
		for i, r := range pick {
			copy(want[r*sh.cols:(r+1)*sh.cols], to64(src[i*sh.cols:(i+1)*sh.cols]))
		}
		s.check("ScatterRows "+tag, s.down(dst), want, 0)

		x := s.up(full)
		s.ok(s.dev.Scale(x, 0.375))
		for i := range want {
			want[i] = float64(full[i] * 0.375)
		}
		s.check("Scale "+tag, s.down(x), want, 0)
	}
}

func (s *convSuite) testEW(t *testing.T) {
	const n = 1000
	a, b := s.normals(n, 1, 0), s.normals(n, 1, 0)
	ba, bb, bs := s.up(a), s.up(b), s.up([]float32{0.25})
	for _, c := range []struct {
		name    string
		op      kernels.EwOp
		bScalar bool
		f       func(x, y float64) float64
	}{
		{"add", kernels.EwAdd, false, func(x, y float64) float64 { return x + y }},
		{"sub", kernels.EwSub, true, func(x, y float64) float64 { return x - 0.25 }},
		{"mul", kernels.EwMul, true, func(x, y float64) float64 { return x * 0.25 }},
		{"div", kernels.EwDiv, false, func(x, y float64) float64 { return x / y }},
		{"ge", kernels.EwGE, false, func(x, y float64) float64 { return map[bool]float64{true: 1, false: 0}[x >= y] }},
		{"neg", kernels.EwNeg, false, func(x, y float64) float64 { return -x }},
		{"relu", kernels.EwReLU, false, func(x, y float64) float64 { return max(x, 0) }},
	} {
		other := bb
		if c.bScalar {
			other = bs
		}
		out := s.out(n)
		s.ok(s.dev.EW(c.op, out, ba, other, n, false, c.bScalar))
		want := make([]float64, n)
		for i := range want {
			want[i] = float64(float32(c.f(float64(a[i]), float64(b[i]))))
		}
		s.check("EW."+c.name, s.down(out), want, 1e-7)
	}
	// Add (the same-shape gradient sums): EW's add bit for bit, with and without the bf16
	// copy, 16-byte kernel and (one element in, unaligned) the fallback, odd lengths too.
	for _, m := range []int{1, 999, 1000} {
		for _, shift := range []int{0, 1} {
			x, y := s.up(append(make([]float32, shift), a[:m]...)).Slice(shift, m), s.up(append(make([]float32, shift), b[:m]...)).Slice(shift, m)
			ref, got, got2 := s.out(m), s.out(m+shift).Slice(shift, m), s.out(m+shift).Slice(shift, m)
			got16 := s.alloc(kernels.BF16, m+shift).Slice(shift, m)
			s.ok(s.dev.EW(kernels.EwAdd, ref, x, y, m, false, false))
			s.ok(s.dev.Add(got, nil, x, y, m))
			s.ok(s.dev.Add(got2, got16, x, y, m))
			if d := bitDiff(s.down(got), s.down(ref)) + bitDiff(s.down(got2), s.down(ref)) + s.castDiff(got16, ref); d != 0 {
				t.Errorf("Add n=%d shift=%d: %d elements differ from EW's add and its bf16 cast", m, shift, d)
			}
		}
	}
	sum := s.out(1)
	s.ok(s.dev.SumAll(sum, ba, n))
	var want float64
	for _, x := range a {
		want += float64(x)
	}
	s.check("EW.sum", s.down(sum), []float64{want}, 1e-6)
}
