package device

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/graph/ops"
	"github.com/dmc-project/dmc/kernels"
)

// The plan keeps far fewer values alive than the schedule produces: a forward pass holds about
// one layer's temporaries, a training step the activations its backward reads.
func TestPlanReusesMemory(t *testing.T) {
	for useDMC, p := range testPrograms(t, 4) {
		for _, backward := range []bool{false, true} {
			s, err := compile(p, backward, false)
			if err != nil {
				t.Fatalf("dmc=%t backward=%t: %v", useDMC, backward, err)
			}
			total := 0
			for _, ins := range s.instrs {
				if ins.out.kind == valArena {
					total += ins.out.n
				}
			}
			t.Logf("dmc=%t backward=%t: %d instructions, arena %d of %d produced elements (%.0f%%)", useDMC, backward,
				len(s.instrs), s.peak[0], total, 100*float64(s.peak[0])/float64(total))
			limit := 0.25
			if backward {
				limit = 0.6
			}
			if float64(s.peak[0]) > limit*float64(total) {
				t.Errorf("dmc=%t backward=%t: the arena holds %d of %d elements (limit %.0f%%)", useDMC, backward, s.peak[0], total, 100*limit)
			}
		}
	}
}

// Every variant of the training graph the trainer can build compiles to a schedule: every op is
// one the executor knows (a graph change that adds another op fails here, in CI, not on the GPU).
func TestPlanCoversEveryVariant(t *testing.T) {
	for _, tie := range []bool{false, true} {
		for _, teacher := range []bool{false, true} {
			w, dc := randomModel(t, 64, 2, 4, 2, 50, 32, tie)
			var tw = w
			if !teacher {
				tw = nil
			}
			headCap := 0.0 // the per-head CR cap's loss terms, in half the variants
			if tie != teacher {
				headCap = 16
			}
			g, err := graph.NewExec(w, dc, 2, 16, graph.Options[float32]{Teacher: tw, HeadCRCap: headCap})
			if err != nil {
				t.Fatal(err)
			}
			for _, useDMC := range []bool{false, true} {
				p, err := g.Program(useDMC)
				if err != nil {
					t.Fatal(err)
				}
				for _, backward := range []bool{false, true} {
					for _, fp32 := range []bool{false, true} {
						name := fmt.Sprintf("tie=%t teacher=%t cap=%g dmc=%t backward=%t fp32=%t", tie, teacher, headCap, useDMC, backward, fp32)
						s, err := compileWith(p, backward, !backward, fp32, nil)
						if err != nil {
							t.Fatalf("%s: %v", name, err)
						}
						requireBindable(t, s)
						grads := 0
						for _, ins := range s.instrs {
							if ins.grad >= 0 {
								grads++
							}
							if ins.fused && ins.info.Kind == ops.KindAttentionGrad && ins.fwd == nil {
								t.Errorf("%s: attention backward without its forward", name)
							}
						}
						if backward && grads != len(p.Params) {
							t.Errorf("%s: %d gradient instructions for %d parameters", name, grads, len(p.Params))
						}
						for i, o := range s.outputs {
							if o == nil && (i < 2 || (i == 2 && teacher) || (i >= 3 && useDMC)) {
								t.Errorf("%s: output %d is not computed", name, i)
							}
						}
						// the folded sums (DMC_FOLD_SUMS), the gradients' own shadows, and then every
						// other planner switch (shadow-only values, paired norm gradients, shared
						// attention shadows) change no result here either
						for _, all := range []bool{false, true} {
							for _, shadows := range []bool{false, true} {
								o := planOptions{backward: backward, keepLogits: !backward, fp32GEMM: fp32, foldSums: true, gradShadows: shadows,
									shadowOnly: all, pairNormGrads: all, attnShadows: all}
								f, err := compileOpts(p, o)
								if err != nil {
									t.Fatalf("%s, %+v: %v", name, o, err)
								}
								requireBindable(t, f)
								requireSameResults(t, fmt.Sprintf("%s, gradShadows=%t, all switches=%t", name, shadows, all), s, f)
							}
						}
					}
				}
				if t.Failed() {
					return
				}
			}
			// The teacher's forward-only program compiles too.
			if tg := g.Teacher(); tg != nil {
				p, err := tg.Program(false)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := compile(p, false, true); err != nil {
					t.Fatalf("teacher: %v", err)
				}
			}
		}
	}
}

// Frozen parameters get no gradient instructions, so their weight-gradient GEMMs never run.
func TestPlanSkipsFrozenGradients(t *testing.T) {
	w, dc := randomModel(t, 64, 2, 4, 2, 50, 32, false)
	g, err := graph.NewExec(w, dc, 2, 16, graph.Options[float32]{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := g.Program(true)
	if err != nil {
		t.Fatal(err)
	}
	frozen := make([]bool, len(p.Params))
	for i := range frozen {
		frozen[i] = i%2 == 0
	}
	all, err := compileWith(p, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	some, err := compileWith(p, true, false, false, frozen)
	if err != nil {
		t.Fatal(err)
	}
	for _, ins := range some.instrs {
		if ins.grad >= 0 && frozen[ins.grad] {
			t.Fatalf("a gradient of the frozen parameter %d is computed", ins.grad)
		}
	}
	if len(some.instrs) >= len(all.instrs) {
		t.Errorf("freezing half the parameters left %d of %d instructions", len(some.instrs), len(all.instrs))
	}
	// with every planner switch on, the trained parameters' gradients are the same
	on, err := compileOpts(p, planOptions{backward: true, frozen: frozen, foldSums: true, gradShadows: true, pairNormGrads: true, attnShadows: true})
	if err != nil {
		t.Fatal(err)
	}
	requireBindable(t, on)
	requireSameResults(t, "frozen, every switch", some, on)
}

func TestFirstFitReusesAndCoalesces(t *testing.T) {
	var a firstFit
	x, y, z := a.get(100), a.get(200), a.get(50)
	if x != 0 || y != 128 || z != 384 || a.top != 512 {
		t.Fatalf("offsets %d %d %d top %d", x, y, z, a.top)
	}
	a.put(y, 200)
	a.put(x, 100) // coalesces with y's block: [0, 384)
	if got := a.get(300); got != 0 {
		t.Fatalf("a 300-element block went to %d, want the coalesced hole at 0", got)
	}
	a.put(z, 50)
	if got := a.get(1000); got != 384 || a.top != 1408 {
		t.Fatalf("a block past the top went to %d (top %d), want 384 (the freed top block extended)", got, a.top)
	}
}

// Recomputation keeps only the layers' inputs through the forward pass: the arena of a training
// step shrinks, every layer but the last is recomputed once, and every variant still plans.
func TestPlanRecompute(t *testing.T) {
	for useDMC, p := range testPrograms(t, 6) {
		plain, err := compileOpts(p, planOptions{backward: true})
		if err != nil {
			t.Fatal(err)
		}
		rc, err := compileOpts(p, planOptions{backward: true, recompute: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("dmc=%t: arena %d → %d elements with recomputation (%.0f%%), %d of %d instructions recomputed",
			useDMC, plain.peak[0], rc.peak[0], 100*float64(rc.peak[0])/float64(plain.peak[0]), rc.recomputed, len(plain.instrs))
		if rc.recomputed == 0 || float64(rc.peak[0]) > 0.6*float64(plain.peak[0]) {
			t.Errorf("dmc=%t: recomputation left %d of %d arena elements (%d instructions recomputed)", useDMC, rc.peak[0], plain.peak[0], rc.recomputed)
		}
		requireBindable(t, rc)
		requireBindable(t, plain)
		if len(rc.instrs) != len(plain.instrs)+rc.recomputed {
			t.Errorf("dmc=%t: %d instructions, want %d + %d", useDMC, len(rc.instrs), len(plain.instrs), rc.recomputed)
		}
		for _, ins := range rc.instrs {
			if ins.fused && ins.info.Kind == ops.KindAttentionGrad && ins.fwd == nil {
				t.Fatalf("dmc=%t: an attention backward lost its forward", useDMC)
			}
		}
	}
}

// requireBindable checks that every value an instruction reads or writes is one bind resolves
// (schedule.all), with its view bases and bf16 shadows: a value outside it would run unbound.
func requireBindable(t *testing.T, s *schedule) {
	t.Helper()
	known := map[*val]bool{}
	for _, v := range s.all {
		known[v] = true
	}
	check := func(i int, v *val) {
		for x := v; x != nil; x = x.base {
			if !known[x] {
				t.Fatalf("instruction %d (%s) uses a value bind never sees", i, s.instrs[i].node.Name())
			}
			if x.kind != valView {
				break
			}
		}
	}
	for i, ins := range s.instrs {
		check(i, ins.out)
		for _, v := range ins.in {
			check(i, v)
		}
	}
}

func TestFitAdvice(t *testing.T) {
	for _, c := range []struct {
		name            string
		need, avail, rc int64
		recompute       bool
		batch           int
		want, wantNot   []string
	}{
		{"recompute fits", 50 * gib, 20 * gib, 5 * gib, false, 1, []string{"50.0 GiB", "20.0 GiB", "--recompute (activations 5.0 GiB: fits)", "train: attention or decisions"}, []string{"a batch of"}},
		{"smaller batch", 40 * gib, 10 * gib, 0, true, 8, []string{"a batch of 2 or less"}, []string{"--recompute"}},
		{"recompute and batch", 80 * gib, 10 * gib, 20 * gib, false, 8, []string{"still too much alone", "a batch of 4 or less"}, nil},
		{"nothing but subset", 80 * gib, 0, 0, true, 1, []string{"a shorter sequence", "train: attention"}, []string{"a batch of", "--recompute"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := fitAdvice(c.need, c.avail, c.rc, c.recompute, c.batch)
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
			for _, w := range c.wantNot {
				if strings.Contains(got, w) {
					t.Errorf("%q should not say %q", got, w)
				}
			}
		})
	}
}

func TestParamState(t *testing.T) {
	for _, c := range []struct {
		n, trained int
		subset     bool
		want       int64
	}{
		{1000, 0, false, 6000},                     // frozen: fp32 + bf16
		{1000, 1000, false, 18000},                 // + gradient + two moments
		{1000, 100, true, 6000 + 4000 + 800 + 800}, // row subset: compact moments and blocks
	} {
		if got := paramState(c.n, c.trained, c.subset); got != c.want {
			t.Errorf("paramState(%d, %d, %t) = %d, want %d", c.n, c.trained, c.subset, got, c.want)
		}
	}
	if s := stateAdvice(130*gib, 100*gib, 0); !strings.Contains(s, "130.0 GiB") || !strings.Contains(s, "decisions") {
		t.Errorf("stateAdvice: %q", s)
	}
}

// testPrograms are the vanilla (false) and DMC (true) Programs of a random GQA model of the
// given depth, 2 sequences of 256 tokens, with a distillation teacher.
func testPrograms(t *testing.T, layers int) map[bool]*graph.Program {
	t.Helper()
	return testProgramsWith(t, layers, true)
}

// testProgramsWith builds them with or without a distillation teacher.
func testProgramsWith(t *testing.T, layers int, teacher bool) map[bool]*graph.Program {
	t.Helper()
	w, dc := randomModel(t, 128, layers, 4, 2, 97, 256, false)
	opt := graph.Options[float32]{}
	if teacher {
		opt.Teacher = w
	}
	g, err := graph.NewExec(w, dc, 2, 256, opt)
	if err != nil {
		t.Fatal(err)
	}
	out := map[bool]*graph.Program{}
	for _, useDMC := range []bool{false, true} {
		if out[useDMC], err = g.Program(useDMC); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// mix is a 64-bit hash step (simulate's tokens).
func mix(a, b uint64) uint64 {
	h := a*0x9e3779b97f4a7c15 ^ b
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	return h ^ h>>32
}

// simulate runs a schedule on symbolic contents: every element holds a token, an
// instruction's output elements get tokens derived from its node and the contents it reads (a
// same-shape sum adds its inputs' tokens; a folded op adds its own into its output's), values
// share the arena as planned, bf16 shadows are cast where the plan casts them, and the result
// is the contents of the outputs and the gradients by node. Two schedules of one program that
// compute the same thing agree, whatever their storage plans; one whose plan lets a value
// clobber another that is still read does not.
func simulate(s *schedule) map[string]uint64 {
	var mem [4][]uint64
	for dt := range mem {
		mem[dt] = make([]uint64, s.peak[dt])
	}
	own := map[*val][]uint64{}
	var at func(v *val) []uint64
	at = func(v *val) []uint64 {
		switch v.kind {
		case valArena:
			return mem[v.dt][v.off : v.off+v.n]
		case valView:
			return at(v.base)[v.viewOff : v.viewOff+v.n]
		}
		b, ok := own[v]
		if !ok {
			id := uint64(1 << 40)
			if v.node != nil {
				id = uint64(v.node.ID()) + 1
			}
			b = make([]uint64, v.n)
			for i := range b {
				b[i] = mix(id, uint64(i))
			}
			own[v] = b
		}
		return b
	}
	digest := func(b []uint64) uint64 {
		h := uint64(len(b))
		for _, x := range b {
			h = mix(h, x)
		}
		return h
	}
	cast := func(v *val) {
		src, dst := at(v), at(v.b16)
		for i := range dst {
			dst[i] = src[i] ^ 0x5bd1e995
		}
	}
	for _, v := range s.castAt[0] {
		cast(v)
	}
	// runOne runs one instruction (and a weight gradient it computes too); inputs, when not
	// nil, are the contents its inputs are read as (a paired weight gradient reads what its
	// RMSNorm dx read, before dx was written)
	var runOne func(ins *instr, inputs [][]uint64)
	runOne = func(ins *instr, inputs [][]uint64) {
		h := uint64(ins.node.ID()) + 7
		attn := ins.fused && (ins.info.Kind == ops.KindAttention || ins.info.Kind == ops.KindAttentionGrad) &&
			!s.fp32GEMM && kernels.TensorCoreAttention(ins.info.Attn.HeadD)
		var pairIn [][]uint64
		if ins.normDW != nil { // the dx kernel's own x and dy, as they are now
			pairIn = [][]uint64{slices.Clone(at(ins.in[0])), slices.Clone(at(ins.in[2]))}
		}
		for k, v := range ins.in {
			if inputs != nil {
				h = mix(h, digest(inputs[k]))
				continue
			}
			switch {
			case readsShadow(ins, k, v):
				v = v.b16 // the GEMMs (and attention, attnShadows) read the shadows
			case attn && k < 3:
				// the tensor-core attention casts q, k and v itself when they have no shadows
				src := at(v)
				c := make([]uint64, len(src))
				for e := range src {
					c[e] = src[e] ^ 0x5bd1e995
				}
				h = mix(h, digest(c))
				continue
			}
			h = mix(h, digest(at(v)))
		}
		if ins.fwd != nil {
			h = mix(mix(h, digest(at(ins.fwd.out))), digest(at(ins.fwd.stats)))
		}
		var out []uint64
		if ins.out.shadowOnly { // no fp32 storage: the kernel writes the shadow alone
			out = make([]uint64, ins.out.n)
		} else {
			out = at(ins.out)
		}
		next := make([]uint64, len(out))
		switch {
		case !ins.fused && ins.gen == genEW && ins.ew == kernels.EwAdd && len(ins.in) == 2 && ins.in[0].n == len(out) && ins.in[1].n == len(out):
			a, b := at(ins.in[0]), at(ins.in[1])
			for e := range next {
				next[e] = a[e] + b[e]
			}
		case ins.accum:
			for e := range next {
				next[e] = out[e] + mix(h, uint64(e))
			}
		default:
			for e := range next {
				next[e] = mix(h, uint64(e))
			}
		}
		copy(out, next)
		if ins.stats != nil {
			st := at(ins.stats)
			for e := range st {
				st[e] = mix(h^1, uint64(e))
			}
		}
		if ins.out.shadowOnly {
			dst := at(ins.out.b16)
			for e := range dst {
				dst[e] = next[e] ^ 0x5bd1e995
			}
		} else if ins.out.b16Fused {
			cast(ins.out)
		}
		for _, v := range ins.halves16 {
			if v != nil {
				cast(v)
			}
		}
		if ins.normDW != nil { // the paired weight gradient, computed from what dx read
			runOne(ins.normDW, pairIn)
		}
	}
	for i, ins := range s.instrs {
		if !ins.nop {
			runOne(ins, nil)
		}
		for _, v := range s.castAt[i+1] {
			cast(v)
		}
	}
	res := map[string]uint64{}
	for k, o := range s.outputs {
		if o != nil {
			res[fmt.Sprintf("output %d", k)] = digest(at(o))
		}
	}
	for _, ins := range s.instrs {
		if ins.grad >= 0 {
			res[fmt.Sprintf("gradient %d", ins.grad)] = digest(at(ins.out))
		}
	}
	return res
}

// Folding gradient sums into the ops that feed them (DMC_FOLD_SUMS) leaves every output and
// gradient as it was, with and without recomputation and bf16 shadows, in no more memory.
func TestFoldSumsKeepsTheResults(t *testing.T) {
	const layers = 3
	for useDMC, p := range testPrograms(t, layers) {
		// per layer every backward sum of activation-sized gradients (five; with DMC seven, the
		// gate gradients' included)
		least := 5 * layers
		if useDMC {
			least = 7 * layers
		}
		testFoldSums(t, p, least)
	}
}

func testFoldSums(t *testing.T, p *graph.Program, least int) {
	for _, c := range []struct{ recompute, fp32 bool }{{false, false}, {true, false}, {false, true}} {
		recompute := c.recompute
		plain, err := compileOpts(p, planOptions{backward: true, recompute: recompute, fp32GEMM: c.fp32})
		if err != nil {
			t.Fatal(err)
		}
		folded, err := compileOpts(p, planOptions{backward: true, recompute: recompute, fp32GEMM: c.fp32, foldSums: true})
		if err != nil {
			t.Fatal(err)
		}
		requireBindable(t, folded)
		accum, nops := 0, 0
		for _, ins := range folded.instrs {
			if ins.accum {
				accum++
			}
			if ins.nop {
				nops++
			}
		}
		t.Logf("recompute=%t: %d of %d instructions folded; arena %d → %d elements", recompute, nops, len(plain.instrs), plain.peak[0], folded.peak[0])
		if accum != nops || accum < least {
			t.Fatalf("recompute=%t: %d folded ops, %d folded sums (want equal, ≥ %d)", recompute, accum, nops, least)
		}
		if folded.peak[0] > plain.peak[0] {
			t.Errorf("recompute=%t: folding grew the arena from %d to %d elements", recompute, plain.peak[0], folded.peak[0])
		}
		requireSameResults(t, fmt.Sprintf("recompute=%t", recompute), plain, folded)
	}
}

// The gradient sums and SwiGLU's backward writing their bf16 shadows themselves
// (DMC_GRAD_SHADOWS) leave every output and gradient as it was, with and without folded sums
// and recomputation, and take casts out of the schedule.
func TestGradShadowsKeepTheResults(t *testing.T) {
	const layers = 3
	for useDMC, p := range testPrograms(t, layers) {
		for _, c := range []struct{ recompute, fold bool }{{false, false}, {false, true}, {true, true}} {
			name := fmt.Sprintf("dmc=%t recompute=%t fold=%t", useDMC, c.recompute, c.fold)
			o := planOptions{backward: true, recompute: c.recompute, foldSums: c.fold}
			plain, fused := compileBoth(t, p, o, func(o *planOptions) { o.gradShadows = true })
			casts := func(s *schedule) (n int) {
				for _, c := range s.castAt {
					n += len(c)
				}
				return n
			}
			halves := 0
			for i, ins := range fused.instrs {
				// a shadow its producer writes is born there (its storage is the shadow's from then on)
				for _, v := range append([]*val{ins.out}, ins.halves16[:]...) {
					if v != nil && v.b16Fused && v.b16.def != i {
						t.Errorf("%s: instruction %d writes a shadow born at %d", name, i, v.b16.def)
					}
				}
				if ins.info.Kind == ops.KindSwiGLUGrad && ins.fused {
					if ins.halves16[0] == nil || ins.halves16[1] == nil {
						t.Errorf("%s: SwiGLU's backward does not write both shadows", name)
					}
					halves++
				}
			}
			// per layer at least SwiGLU's two halves (with folded sums most sums no longer run:
			// the ops they were folded into write the sums, which are cast after them)
			if halves != layers || casts(fused) > casts(plain)-2*layers {
				t.Errorf("%s: %d SwiGLU backwards with shadows, casts %d → %d", name, halves, casts(plain), casts(fused))
			}
			if fused.peak[1] > plain.peak[1] || fused.peak[0] > plain.peak[0] {
				t.Errorf("%s: the arena grew: %v → %v", name, plain.peak, fused.peak)
			}
			requireSameResults(t, name, plain, fused)
			t.Logf("%s: casts %d → %d", name, casts(plain), casts(fused))
		}
	}
}

// The simulation notices a plan that lets values clobber each other.
func TestSimulateNoticesClobbering(t *testing.T) {
	p := testPrograms(t, 2)[true]
	s, err := compileOpts(p, planOptions{backward: true})
	if err != nil {
		t.Fatal(err)
	}
	want := simulate(s)
	for _, v := range s.all {
		if v.kind == valArena && v.dt == kernels.F32 {
			v.off = 0 // every fp32 value in the same place
		}
	}
	got, same := simulate(s), 0
	for k, w := range want {
		if got[k] == w {
			same++
		}
	}
	if same == len(want) {
		t.Fatal("overlapping every value changed no result")
	}
}

// A GEMM reads only the bf16 shadow of its operands, so their fp32 values die at their last
// other reader (often their producer): every output and gradient stays as it was, and without
// recomputation the fp32 arena shrinks (each layer's RMSNorm and SwiGLU outputs no longer live
// from the forward until their weight gradients).
func TestShadowOnlyGEMMSourcesKeepTheResults(t *testing.T) {
	const layers = 3
	for useDMC, p := range testPrograms(t, layers) {
		for _, c := range []struct{ recompute, fold, gradShadows bool }{
			{false, false, false}, {false, true, false}, {false, true, true}, {true, true, false}, {true, true, true},
		} {
			name := fmt.Sprintf("dmc=%t recompute=%t fold=%t gradShadows=%t", useDMC, c.recompute, c.fold, c.gradShadows)
			o := planOptions{backward: true, recompute: c.recompute, foldSums: c.fold, gradShadows: c.gradShadows}
			kept, short := compileBoth(t, p, o, func(o *planOptions) { o.shadowOnly = true })
			only := 0
			for _, ins := range short.instrs {
				if ins.out.shadowOnly {
					only++
				}
			}
			// without recomputation every layer's two RMSNorms and its SwiGLU write their shadows alone
			if !c.recompute && only < 3*layers {
				t.Errorf("%s: %d producers write their shadows alone, want ≥ %d", name, only, 3*layers)
			}
			if short.peak[0] > kept.peak[0] || (!c.recompute && short.peak[0] >= kept.peak[0]) {
				t.Errorf("%s: fp32 arena %d → %d elements", name, kept.peak[0], short.peak[0])
			}
			requireSameResults(t, name, kept, short)
			t.Logf("%s: fp32 arena %d → %d elements; %d producers write their shadows alone", name, kept.peak[0], short.peak[0], only)
		}
	}
}

// Each RMSNorm dx computing its norm's weight gradient too (DMC_NORM_GRADS=paired) leaves
// every output and gradient as it was, pairs every norm of the model, and does not grow the
// arena.
func TestPairNormGradsKeepsTheResults(t *testing.T) {
	const layers = 3
	for useDMC, p := range testPrograms(t, layers) {
		for _, c := range []struct{ recompute, fold, gradShadows bool }{
			{false, false, false}, {false, true, true}, {true, true, false}, {true, true, true},
		} {
			name := fmt.Sprintf("dmc=%t recompute=%t fold=%t gradShadows=%t", useDMC, c.recompute, c.fold, c.gradShadows)
			o := planOptions{backward: true, recompute: c.recompute, foldSums: c.fold, gradShadows: c.gradShadows}
			plain, paired := compileBoth(t, p, o, func(o *planOptions) { o.pairNormGrads = true })
			pairs := 0
			for i, ins := range paired.instrs {
				if ins.normDW == nil {
					continue
				}
				pairs++
				if !ins.normDW.nop || !ins.normDW.direct || ins.normDW.info.Kind != ops.KindRMSNormDW {
					t.Errorf("%s: instruction %d is paired with a weight gradient that still runs or is not direct", name, i)
				}
			}
			if want := 2*layers + 1; pairs != want { // two norms a layer and the final one
				t.Errorf("%s: %d norms paired, want %d", name, pairs, want)
			}
			if paired.peak[0] > plain.peak[0] {
				t.Errorf("%s: the fp32 arena grew from %d to %d elements", name, plain.peak[0], paired.peak[0])
			}
			requireSameResults(t, name, plain, paired)
		}
	}
}

// The attention's q, k and v cast once to shadows that the forward and the backward share
// (DMC_ATTN_SHADOWS) leave every output and gradient as it was, and without recomputation
// take their fp32 values' lifetimes down to their producers (the fp32 arena shrinks).
func TestAttnShadowsKeepTheResults(t *testing.T) {
	const layers = 3
	for useDMC, p := range testPrograms(t, layers) {
		// shadowOnly with the extra switches: the attention's shadows must pay for themselves
		// (a smaller arena) with the executor's default plan too
		for _, c := range []struct{ recompute, fold, extra bool }{{false, false, false}, {false, true, true}, {true, true, false}, {true, true, true}} {
			name := fmt.Sprintf("dmc=%t recompute=%t fold=%t gradShadows+pairNormGrads+shadowOnly=%t", useDMC, c.recompute, c.fold, c.extra)
			o := planOptions{backward: true, recompute: c.recompute, foldSums: c.fold, gradShadows: c.extra, pairNormGrads: c.extra, shadowOnly: c.extra}
			plain, shared := compileBoth(t, p, o, func(o *planOptions) { o.attnShadows = true })
			fwd, bwd := 0, 0
			for _, ins := range shared.instrs {
				if !ins.fused || (ins.info.Kind != ops.KindAttention && ins.info.Kind != ops.KindAttentionGrad) {
					continue
				}
				for k, v := range ins.in[:3] {
					if !readsShadow(ins, k, v) {
						t.Fatalf("%s: %s input %d has no shadow", name, ins.info.Kind, k)
					}
				}
				if ins.info.Kind == ops.KindAttention {
					fwd++
				} else {
					bwd++
				}
			}
			ropeOnly, mergeOnly := 0, 0
			for _, ins := range shared.instrs {
				if ins.fused && ins.info.Kind == ops.KindRoPE && ins.out.shadowOnly {
					ropeOnly++
				}
				if ins.fused && ins.info.Kind == ops.KindDMCMerge && ins.out.shadowOnly {
					mergeOnly++
				}
			}
			// with DMC each layer's merged values: the merge writes their shadow alone
			if useDMC && !c.recompute && mergeOnly < layers {
				t.Errorf("%s: %d merge outputs written as shadows alone, want ≥ %d", name, mergeOnly, layers)
			}
			// each layer's queries at least: RoPE writes their shadow alone
			if !c.recompute && ropeOnly < layers {
				t.Errorf("%s: %d RoPE outputs written as shadows alone, want ≥ %d", name, ropeOnly, layers)
			}
			if bwd != layers || fwd < layers {
				t.Errorf("%s: %d attention forwards and %d backwards read shadows, want ≥ %d and %d", name, fwd, bwd, layers, layers)
			}
			if shared.peak[0] > plain.peak[0] || (!c.recompute && shared.peak[0] >= plain.peak[0]) {
				t.Errorf("%s: fp32 arena %d → %d elements", name, plain.peak[0], shared.peak[0])
			}
			// (with recompute a layer's activations live for one layer only, and the shadows
			// may cost slightly more than they free: +2% in the shadow-only 3-layer graph)
			if !c.recompute && arenaBytes(shared) >= arenaBytes(plain) {
				t.Errorf("%s: the arenas grow from %d to %d bytes: the shadows cost more than the fp32 values they free", name, arenaBytes(plain), arenaBytes(shared))
			}
			requireSameResults(t, name, plain, shared)
			t.Logf("%s: arena fp32 %d → %d, bf16 %d → %d elements; %d RoPE outputs as shadows alone", name, plain.peak[0], shared.peak[0], plain.peak[1], shared.peak[1], ropeOnly)
		}
	}
}

// Without a teacher the head's logit gradient is the cross-entropy's alone, and with the
// gradients' own shadows (DMC_GRAD_SHADOWS) its kernel writes the bf16 GEMM operand alone:
// every output and gradient as it was.
func TestCrossEntropyGradWritesItsShadow(t *testing.T) {
	for useDMC, p := range testProgramsWith(t, 2, false) {
		for _, c := range []struct{ recompute, shadowOnly bool }{{false, false}, {false, true}, {true, true}} {
			name := fmt.Sprintf("dmc=%t recompute=%t shadowOnly=%t", useDMC, c.recompute, c.shadowOnly)
			o := planOptions{backward: true, recompute: c.recompute, foldSums: true, shadowOnly: c.shadowOnly}
			plain, fused := compileBoth(t, p, o, func(o *planOptions) { o.gradShadows = true })
			ce := 0
			for _, ins := range fused.instrs {
				if ins.fused && ins.info.Kind == ops.KindSoftmaxCEGrad && ins.out.shadowOnly {
					ce++
				}
			}
			// without shadowOnly the fp32 gradient lives until the head's GEMMs, so it is written too
			if want := b2i(c.shadowOnly); ce != want {
				t.Errorf("%s: %d cross-entropy gradients write their shadows alone, want %d", name, ce, want)
			}
			requireSameResults(t, name, plain, fused)
		}
	}
}

// requireSameResults fails unless schedules a and b compute the same outputs and gradients
// (simulate).
func requireSameResults(t *testing.T, name string, a, b *schedule) {
	t.Helper()
	want, got := simulate(a), simulate(b)
	if len(want) != len(got) {
		t.Fatalf("%s: %d results, want %d", name, len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %s differs", name, k)
		}
	}
}

// compileBoth compiles p with o and with o as set changes it (that one checked bindable).
func compileBoth(t *testing.T, p *graph.Program, o planOptions, set func(*planOptions)) (before, after *schedule) {
	t.Helper()
	before, err := compileOpts(p, o)
	if err != nil {
		t.Fatal(err)
	}
	set(&o)
	if after, err = compileOpts(p, o); err != nil {
		t.Fatal(err)
	}
	requireBindable(t, after)
	return before, after
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// arenaBytes is the size of a schedule's four arenas together.
func arenaBytes(s *schedule) int64 {
	var n int64
	for dt, p := range s.peak {
		n += int64(p) * int64(kernels.DType(dt).Size())
	}
	return n
}
