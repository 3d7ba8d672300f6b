package ops

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/dmc"
)

// DMCSpec fixes the geometry and hyper-parameters of the DMC ops over rows n = b·T + t.
type DMCSpec struct {
	QHeads, KVHeads, HeadD, SeqLen int
	Channel                        int     // the decision channel, resolved (0 ≤ ch < D)
	DecisionOffset                 float64 // a = k[ch] − DecisionOffset
	ImportanceOffset               float64 // ω = σ(mean_g q[ch] + ImportanceOffset) + ε
	Temperature                    float64 // τ
	Window                         int     // W; 0 = unbounded
}

func (s DMCSpec) key() string {
	return fmt.Sprintf("Hq=%d,Hkv=%d,D=%d,T=%d,ch=%d,dOff=%x,iOff=%x,tau=%x,W=%d", s.QHeads, s.KVHeads, s.HeadD, s.SeqLen,
		s.Channel, math.Float64bits(s.DecisionOffset), math.Float64bits(s.ImportanceOffset), math.Float64bits(s.Temperature), s.Window)
}

func (s DMCSpec) check() error {
	if s.QHeads <= 0 || s.KVHeads <= 0 || s.QHeads%s.KVHeads != 0 || s.HeadD <= 0 || s.SeqLen <= 0 ||
		s.Channel < 0 || s.Channel >= s.HeadD || !(s.Temperature > 0) || s.Window < 0 {
		return fmt.Errorf("invalid DMC spec %+v", s)
	}
	return nil
}

func (s DMCSpec) rowsOK(op string, shp tensor.Shape, width int) error {
	if len(shp) != 2 || shp[1] != width || shp[0]%s.SeqLen != 0 {
		return fmt.Errorf("%s: shape %v is not [B·%d, %d]", op, shp, s.SeqLen, width)
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Decisions.

// DecisionMode is what the scalar input "hard" of DMCDecide selects.
type DecisionMode int

const (
	// DecideSoft: α̃ = σ((k[ch] − offset + noise)/τ) and its gradient (the reference's training).
	DecideSoft DecisionMode = 0
	// DecideHard: α = 1[k[ch] − offset > 0], noise ignored, zero gradient (evaluation).
	DecideHard DecisionMode = 1
	// DecideStraightThrough: the hard α forward, so that training sees exactly the decisions
	// inference makes, and backward the gradient of σ(k[ch] − offset): the probability of a
	// merge under the soft mode's logistic noise as τ → 0, so decisions far from the threshold
	// (|a| up to ~5, not ~5τ) still get the CR loss's push.
	DecideStraightThrough DecisionMode = 2
)

// DecisionModeOf maps the scalar fed to DMCDecide's hard input to its mode: 0 soft, 2
// straight-through, any other non-zero value hard.
func DecisionModeOf(x float64) DecisionMode {
	switch x {
	case 0:
		return DecideSoft
	case 2:
		return DecideStraightThrough
	}
	return DecideHard
}

// DMCDecide returns α [B·T, Hkv] from pre-RoPE keys k [B·T, Hkv·D], logistic noise [B·T, Hkv]
// and the scalar hard, a DecisionMode: soft α̃ = σ((k[ch] − offset + noise)/τ); hard α =
// 1[k[ch] − offset > 0], noise ignored, zero gradient; straight-through: the hard α with the
// gradient of σ(k[ch] − offset). α at t = 0 is always 0.
func DMCDecide(k, noise, hard *G.Node, s DMCSpec) (*G.Node, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return apply(decideOp{s, false}, k, noise, hard)
}

type decideOp struct {
	s    DMCSpec
	back bool // backward: inputs (k, noise, hard, dα) → dk
}

func (o decideOp) key() string { return fmt.Sprintf("DMCDecide{%s,back=%t}", o.s.key(), o.back) }
func (o decideOp) signature() ([]arg, arg) {
	if o.back {
		return []arg{matArg, matArg, scalarArg, matArg}, matArg
	}
	return []arg{matArg, matArg, scalarArg}, matArg
}
func (o decideOp) diffWRT() []bool { return []bool{true, false, false} }
func (o decideOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if err := o.s.rowsOK("DMCDecide k", in[0], o.s.KVHeads*o.s.HeadD); err != nil {
		return nil, err
	}
	if err := o.s.rowsOK("DMCDecide noise", in[1], o.s.KVHeads); err != nil {
		return nil, err
	}
	if o.back {
		return in[0].Clone(), nil
	}
	return tensor.Shape{in[0][0], o.s.KVHeads}, nil
}
func (o decideOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	mode := DecisionModeOf(scalar(in[2]))
	dispatch(out.Dtype(), func() {
		var dA []float32
		if o.back {
			dA = data[float32](in[3])
		}
		decideKernel(o, out.Float32s(), data[float32](in[0]), data[float32](in[1]), mode, dA)
	}, func() {
		var dA []float64
		if o.back {
			dA = data[float64](in[3])
		}
		decideKernel(o, out.Float64s(), data[float64](in[0]), data[float64](in[1]), mode, dA)
	})
	return 0, nil
}
func (o decideOp) grad(in G.Nodes, _, dA *G.Node) (G.Nodes, error) {
	dk, err := apply(decideOp{o.s, true}, in[0], in[1], in[2], dA)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dk, nil, nil}, nil
}

func decideKernel[T Float](o decideOp, out, k, noise []T, mode DecisionMode, dA []T) {
	s := o.s
	H, D, Tn, ch := s.KVHeads, s.HeadD, s.SeqLen, s.Channel
	if o.back {
		clear(out)
	}
	for n := 0; n < len(k)/(H*D); n++ {
		first := n%Tn == 0 // α = 0 at t = 0, with no gradient
		for h := 0; h < H; h++ {
			a := float64(k[(n*H+h)*D+ch]) - s.DecisionOffset
			if !o.back {
				alpha := 0.0
				switch {
				case first:
				case mode == DecideSoft:
					alpha = dmc.Sigmoid((a + float64(noise[n*H+h])) / s.Temperature)
				case a > 0:
					alpha = 1
				}
				out[n*H+h] = T(alpha)
				continue
			}
			if first || mode == DecideHard {
				continue
			}
			tau := 1.0 // straight-through: d/da σ(a)
			if mode == DecideSoft {
				a, tau = a+float64(noise[n*H+h]), s.Temperature
			}
			alpha := dmc.Sigmoid(a / tau)
			out[(n*H+h)*D+ch] = T(float64(dA[n*H+h]) * alpha * (1 - alpha) / tau)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Importance.

// DMCImportance returns ω [B·T, Hkv] = σ(mean over the group's query heads of q[ch] +
// offset) + ε from pre-RoPE queries q [B·T, Hq·D]; ε is the machine epsilon of the dtype and ω
// is rounded to the dtype once, as dmc.Gates does.
func DMCImportance(q *G.Node, s DMCSpec) (*G.Node, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return apply(importanceOp{s, false}, q)
}

type importanceOp struct {
	s    DMCSpec
	back bool // backward: inputs (q, dω) → dq
}

func (o importanceOp) key() string {
	return fmt.Sprintf("DMCImportance{%s,back=%t}", o.s.key(), o.back)
}
func (o importanceOp) signature() ([]arg, arg) {
	if o.back {
		return []arg{matArg, matArg}, matArg
	}
	return []arg{matArg}, matArg
}
func (o importanceOp) diffWRT() []bool { return []bool{true} }
func (o importanceOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if err := o.s.rowsOK("DMCImportance q", in[0], o.s.QHeads*o.s.HeadD); err != nil {
		return nil, err
	}
	if o.back {
		return in[0].Clone(), nil
	}
	return tensor.Shape{in[0][0], o.s.KVHeads}, nil
}
func (o importanceOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		var d []float32
		if o.back {
			d = data[float32](in[1])
		}
		importanceKernel(o, out.Float32s(), data[float32](in[0]), d, dmc.Epsilon[float32]())
	}, func() {
		var d []float64
		if o.back {
			d = data[float64](in[1])
		}
		importanceKernel(o, out.Float64s(), data[float64](in[0]), d, dmc.Epsilon[float64]())
	})
	return 0, nil
}
func (o importanceOp) grad(in G.Nodes, _, dW *G.Node) (G.Nodes, error) {
	dq, err := apply(importanceOp{o.s, true}, in[0], dW)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dq}, nil
}

func importanceKernel[T Float](o importanceOp, out, q, dW []T, eps float64) {
	s := o.s
	Hq, Hkv, D, ch := s.QHeads, s.KVHeads, s.HeadD, s.Channel
	Gs := Hq / Hkv
	if o.back {
		clear(out)
	}
	for n := 0; n < len(q)/(Hq*D); n++ {
		for h := 0; h < Hkv; h++ {
			var sum float64
			for g := h * Gs; g < (h+1)*Gs; g++ {
				sum += float64(q[(n*Hq+g)*D+ch])
			}
			sg := dmc.Sigmoid(sum/float64(Gs) + s.ImportanceOffset)
			if !o.back {
				out[n*Hkv+h] = T(sg + eps)
				continue
			}
			d := float64(dW[n*Hkv+h]) * sg * (1 - sg) / float64(Gs)
			for g := h * Gs; g < (h+1)*Gs; g++ {
				out[(n*Hq+g)*D+ch] = T(d)
			}
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Windowed partial accumulation.

// DMCMerge returns the partial accumulations x̃ [B·T, Hkv·D] of x (pre-RoPE keys or values)
// under decisions α and importances ω ([B·T, Hkv] each), per sequence and KV head:
//
//	x̃_i = Σ_{j=lo..i} c_ij ω_j x_j / Σ_{j=lo..i} c_ij ω_j,  c_ij = Π_{m=j+1..i} α_m,
//
// lo = max(seq start, i−W+1), or the sequence start when W = 0.
func DMCMerge(x, alpha, omega *G.Node, s DMCSpec) (*G.Node, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return apply(mergeOp{s, false}, x, alpha, omega)
}

type mergeOp struct {
	s    DMCSpec
	back bool // backward: inputs (x, α, ω, dy) → packed [dx | dα | dω]
}

func (o mergeOp) key() string { return fmt.Sprintf("DMCMerge{%s,back=%t}", o.s.key(), o.back) }
func (o mergeOp) signature() ([]arg, arg) {
	if o.back {
		return []arg{matArg, matArg, matArg, matArg}, vecArg
	}
	return []arg{matArg, matArg, matArg}, matArg
}
func (o mergeOp) diffWRT() []bool { return []bool{true, true, true} }
func (o mergeOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	s := o.s
	if err := s.rowsOK("DMCMerge x", in[0], s.KVHeads*s.HeadD); err != nil {
		return nil, err
	}
	N := in[0][0]
	for i := 1; i <= 2; i++ {
		if !in[i].Eq(tensor.Shape{N, s.KVHeads}) {
			return nil, fmt.Errorf("DMCMerge: input %d has shape %v, want [%d %d]", i, in[i], N, s.KVHeads)
		}
	}
	if o.back {
		return tensor.Shape{N*s.KVHeads*s.HeadD + 2*N*s.KVHeads}, nil
	}
	return in[0].Clone(), nil
}
func (o mergeOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		var dy []float32
		if o.back {
			dy = data[float32](in[3])
		}
		mergeKernel(o, out.Float32s(), data[float32](in[0]), data[float32](in[1]), data[float32](in[2]), dy)
	}, func() {
		var dy []float64
		if o.back {
			dy = data[float64](in[3])
		}
		mergeKernel(o, out.Float64s(), data[float64](in[0]), data[float64](in[1]), data[float64](in[2]), dy)
	})
	return 0, nil
}
func (o mergeOp) grad(in G.Nodes, _, dy *G.Node) (G.Nodes, error) {
	packed, err := apply(mergeOp{o.s, true}, in[0], in[1], in[2], dy)
	if err != nil {
		return nil, err
	}
	return unpackAll("DMCMerge", packed, in[0].Shape(), in[1].Shape(), in[2].Shape())
}

func mergeKernel[T Float](o mergeOp, out, x, alpha, omega, dy []T) {
	s := o.s
	H, D, Tn, W := s.KVHeads, s.HeadD, s.SeqLen, s.Window
	N := len(alpha) / H
	B := N / Tn
	var dx, dA, dW []T
	if o.back {
		dx, dA, dW = out[:N*H*D], out[N*H*D:N*H*D+N*H], out[N*H*D+N*H:]
		clear(out)
	}
	span := Tn
	if W > 0 {
		span = min(W, Tn)
	}
	nw := workers(B * H)
	scratch := make([]float64, nw*(D+2*span))
	parallelItems(B*H, func(w, item int) {
		b, h := item/H, item%H
		sc := scratch[w*(D+2*span) : (w+1)*(D+2*span)]
		num, cs, rho := sc[:D], sc[D:D+span], sc[D+span:]
		row := func(t int) int { return (b*Tn+t)*H + h } // index into α, ω; ×D for x
		for i := 0; i < Tn; i++ {
			lo := 0
			if W > 0 {
				lo = max(0, i-W+1)
			}
			clear(num)
			var den float64
			c := 1.0
			for j := i; j >= lo; j-- {
				r := row(j)
				cs[i-j] = c
				wt := c * float64(omega[r])
				xj := x[r*D : (r+1)*D]
				for d := range num {
					num[d] += wt * float64(xj[d])
				}
				den += wt
				c *= float64(alpha[r])
			}
			ri := row(i)
			if !o.back {
				yi := out[ri*D : (ri+1)*D]
				for d := range num {
					yi[d] = T(num[d] / den)
				}
				continue
			}
			// dN = g/Z, dZ = −g·x̃/Z; then per j: e = dN·x_j + dZ, dx_j += c ω_j dN,
			// dω_j += c e, and ρ_j = ω_j e = ∂L/∂c_ij feeds dα through the product.
			g := dy[ri*D : (ri+1)*D]
			var gy float64
			for d := range num {
				gy += float64(g[d]) * num[d] / den
			}
			dZ := -gy / den
			for j := i; j >= lo; j-- {
				r := row(j)
				c := cs[i-j]
				xj, dxj := x[r*D:(r+1)*D], dx[r*D:(r+1)*D]
				om := float64(omega[r])
				var dot float64
				for d := range xj {
					gd := float64(g[d]) / den
					dot += gd * float64(xj[d])
					dxj[d] += T(c * om * gd)
				}
				e := dot + dZ
				dW[r] += T(c * e)
				rho[i-j] = om * e
			}
			// dα_m = c_im · S_m with S_{lo+1} = ρ_lo, S_{m+1} = S_m α_m + ρ_m.
			var S float64
			for m := lo + 1; m <= i; m++ {
				S = S*float64(alpha[row(m-1)]) + rho[i-(m-1)] // S starts at 0
				dA[row(m)] += T(cs[i-m] * S)
			}
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Straight-through decision count.

// DMCHardCount returns, for α [B·T, Hkv], the per-sequence count [B] of hard decisions
// 1[α > 0.5] over positions and heads; its gradient is the straight-through estimator
// (1[α̃>0.5] − stopgrad(α̃) + α̃): the count's gradient flows to every α unchanged.
func DMCHardCount(alpha *G.Node, seqLen int) (*G.Node, error) {
	return apply(hardCountOp{T: seqLen}, alpha)
}

// DMCHeadCount is DMCHardCount per sequence and KV head: counts [B·Hkv] (element b·Hkv + h)
// of 1[α > 0.5] over the positions, with the same straight-through gradient.
func DMCHeadCount(alpha *G.Node, seqLen int) (*G.Node, error) {
	return apply(hardCountOp{T: seqLen, perHead: true}, alpha)
}

type hardCountOp struct {
	T       int
	back    bool // backward: inputs (α, g) → dα
	perHead bool // counts per (sequence, head) instead of per sequence
}

func (o hardCountOp) key() string {
	return fmt.Sprintf("DMCHardCount{T=%d,back=%t,perHead=%t}", o.T, o.back, o.perHead)
}
func (o hardCountOp) signature() ([]arg, arg) {
	if o.back {
		return []arg{matArg, vecArg}, matArg
	}
	return []arg{matArg}, vecArg
}
func (o hardCountOp) diffWRT() []bool { return []bool{true} }
func (o hardCountOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if len(in[0]) != 2 || in[0][0]%o.T != 0 {
		return nil, fmt.Errorf("DMCHardCount: shape %v is not [B·%d, H]", in[0], o.T)
	}
	if o.back {
		return in[0].Clone(), nil
	}
	if o.perHead {
		return tensor.Shape{in[0][0] / o.T * in[0][1]}, nil
	}
	return tensor.Shape{in[0][0] / o.T}, nil
}
func (o hardCountOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	H := in[0].Shape()[1]
	dispatch(out.Dtype(), func() {
		hardCountKernel(o, out.Float32s(), data[float32](in[0]), H, in)
	}, func() {
		hardCountKernel(o, out.Float64s(), data[float64](in[0]), H, in)
	})
	return 0, nil
}
func (o hardCountOp) grad(in G.Nodes, _, g *G.Node) (G.Nodes, error) {
	d, err := apply(hardCountOp{T: o.T, back: true, perHead: o.perHead}, in[0], g)
	if err != nil {
		return nil, err
	}
	return G.Nodes{d}, nil
}

func hardCountKernel[T Float](o hardCountOp, out, alpha []T, H int, in []G.Value) {
	per := o.T * H
	// bucket is the count element α[i] adds to: its sequence, or its (sequence, head).
	bucket := func(i int) int { return i / per }
	if o.perHead {
		bucket = func(i int) int { return i/per*H + i%H }
	}
	if o.back {
		g := data[T](in[1])
		for i := range out {
			out[i] = g[bucket(i)]
		}
		return
	}
	clear(out)
	for i, a := range alpha {
		if a > 0.5 {
			out[bucket(i)]++
		}
	}
}
