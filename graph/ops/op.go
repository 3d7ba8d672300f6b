package ops

import (
	"fmt"
	"hash"
	"hash/fnv"
	"runtime"
	"sync"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Float is the element type every kernel is written for.
type Float interface{ ~float32 | ~float64 }

// arg describes one input or the output of an op to gorgonia's type system: the number of
// dimensions (0 = scalar) and whether it holds token ids (tensor.Int) instead of floats.
type arg struct {
	dims int
	ids  bool
}

var (
	scalarArg = arg{dims: 0}
	vecArg    = arg{dims: 1}
	matArg    = arg{dims: 2}
	idsArg    = arg{dims: 1, ids: true}
)

// kernel is what a concrete op supplies; fused wraps it into a gorgonia Op.
type kernel interface {
	// key names the op and every parameter that changes its result: it is the hash-consing key.
	key() string
	signature() (in []arg, out arg)
	shape(in []tensor.Shape) (tensor.Shape, error)
	// exec computes the op. For tensor outputs out is a preallocated tensor of the inferred shape
	// and exec fills every element; for scalar outputs out is nil and exec returns the value.
	exec(out *tensor.Dense, in []G.Value) (float64, error)
}

// differentiable is implemented by forward ops; backward ops do not implement it.
type differentiable interface {
	diffWRT() []bool
	grad(in G.Nodes, out, dOut *G.Node) (G.Nodes, error)
}

// fused adapts a kernel to gorgonia's Op, SDOp and UsePreallocDoer interfaces. arena, when
// set (AttachArena), supplies output tensors the tape machine does not preallocate; it is not
// part of the op's key (one graph has one arena).
type fused struct {
	k     kernel
	arena *Arena
}

func apply(k kernel, children ...*G.Node) (*G.Node, error) {
	return G.ApplyOp(fused{k, arenaOf(children)}, children...)
}

func (f fused) Arity() int {
	in, _ := f.k.signature()
	return len(in)
}

func (f fused) Type() hm.Type {
	in, out := f.k.signature()
	a := hm.TypeVariable('a')
	conv := func(x arg) hm.Type {
		switch {
		case x.ids:
			return G.TensorType{Dims: x.dims, Of: tensor.Int}
		case x.dims == 0:
			return a
		default:
			return G.TensorType{Dims: x.dims, Of: a}
		}
	}
	ts := make([]hm.Type, 0, len(in)+1)
	for _, x := range in {
		ts = append(ts, conv(x))
	}
	ts = append(ts, conv(out))
	return hm.NewFnType(ts...)
}

func (f fused) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	shapes := make([]tensor.Shape, len(ds))
	for i, d := range ds {
		s, ok := d.(tensor.Shape)
		if !ok {
			return nil, fmt.Errorf("%s: input %d has no static shape", f.k.key(), i)
		}
		shapes[i] = s
	}
	return f.k.shape(shapes)
}

func (f fused) Do(in ...G.Value) (G.Value, error) { return f.UsePreallocDo(nil, in...) }

// UsePreallocDo writes into prealloc when the tape machine hands over a register of the right
// dtype and shape (the usual case from the second step on), else allocates.
func (f fused) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	if len(in) != f.Arity() {
		return nil, fmt.Errorf("%s: got %d inputs, want %d", f.k.key(), len(in), f.Arity())
	}
	dt, err := floatDtype(in)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.k.key(), err)
	}
	_, outArg := f.k.signature()
	if outArg.dims == 0 {
		v, err := f.k.exec(nil, in)
		if err != nil {
			return nil, err
		}
		if dt == tensor.Float32 {
			return G.NewF32(float32(v)), nil
		}
		return G.NewF64(v), nil
	}
	shapes := make([]tensor.Shape, len(in))
	for i, v := range in {
		shapes[i] = v.Shape()
	}
	s, err := f.k.shape(shapes)
	if err != nil {
		return nil, err
	}
	out, ok := prealloc.(*tensor.Dense)
	if !ok || out.Dtype() != dt || !out.Shape().Eq(s) || !out.IsNativelyAccessible() || out.RequiresIterator() {
		if f.arena != nil {
			out = f.arena.get(dt, s)
		} else {
			out = tensor.New(tensor.Of(dt), tensor.WithShape(s.Clone()...))
		}
	}
	if _, err := f.k.exec(out, in); err != nil {
		return nil, err
	}
	return out, nil
}

func (f fused) ReturnsPtr() bool      { return false }
func (f fused) CallsExtern() bool     { return false }
func (f fused) OverwritesInput() int  { return -1 }
func (f fused) String() string        { return f.k.key() }
func (f fused) WriteHash(h hash.Hash) { fmt.Fprint(h, "dmc/ops.", f.k.key()) }
func (f fused) Hashcode() uint32 {
	h := fnv.New32a()
	f.WriteHash(h)
	return h.Sum32()
}

func (f fused) DiffWRT(n int) []bool {
	if d, ok := f.k.(differentiable); ok {
		return d.diffWRT()
	}
	return make([]bool, n)
}

func (f fused) SymDiff(in G.Nodes, out, dOut *G.Node) (G.Nodes, error) {
	d, ok := f.k.(differentiable)
	if !ok {
		return nil, fmt.Errorf("%s is a backward op and is not differentiated again", f.k.key())
	}
	return d.grad(in, out, dOut)
}

// floatDtype is the dtype of the float inputs, which must agree.
func floatDtype(in []G.Value) (tensor.Dtype, error) {
	var dt tensor.Dtype
	found := false
	for i, v := range in {
		d := v.Dtype()
		if d != tensor.Float32 && d != tensor.Float64 {
			continue
		}
		if found && d != dt {
			return dt, fmt.Errorf("input %d is %v but an earlier input is %v", i, d, dt)
		}
		dt, found = d, true
	}
	if !found {
		return dt, fmt.Errorf("no float input")
	}
	return dt, nil
}

// scalar reads a scalar input (a gorgonia F32/F64 value or a one-element tensor).
func scalar(v G.Value) float64 {
	switch x := v.Data().(type) {
	case float64:
		return x
	case float32:
		return float64(x)
	case []float64:
		return x[0]
	case []float32:
		return float64(x[0])
	}
	panic(fmt.Sprintf("dmc/ops: %T is not a float scalar", v.Data()))
}

// data returns the backing slice of a float tensor input.
func data[T Float](v G.Value) []T { return v.Data().([]T) }

// ints returns the backing slice of an id tensor.
func ints(v G.Value) []int { return v.Data().([]int) }

// checkShape reports a shape mismatch as a programmer error with the op's name.
func wantShape(op string, i int, got tensor.Shape, want ...int) error {
	if !got.Eq(tensor.Shape(want)) {
		return fmt.Errorf("%s: input %d has shape %v, want %v", op, i, got, want)
	}
	return nil
}

// parallel runs fn over [0, n) split into contiguous chunks, one goroutine per core. cost is a
// rough per-item cost; small jobs run inline.
func parallel(n, cost int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if workers > n {
		workers = n
	}
	if workers <= 1 || n*cost < 1<<14 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	wg.Wait()
}

// workers is the number of goroutines parallelItems uses for n items.
func workers(n int) int { return max(1, min(runtime.GOMAXPROCS(0), n)) }

// parallelItems runs fn(worker, i) for every i in [0, n) with dynamic scheduling (items of
// uneven cost, such as causal attention heads); worker < workers(n) indexes per-goroutine
// scratch space.
func parallelItems(n int, fn func(worker, i int)) {
	workers := workers(n)
	if workers <= 1 {
		for i := 0; i < n; i++ {
			fn(0, i)
		}
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				fn(w, i)
			}
		}(w)
	}
	wg.Wait()
}

// dispatch runs the float32 or float64 instantiation of a kernel.
func dispatch(dt tensor.Dtype, f32, f64 func()) {
	if dt == tensor.Float32 {
		f32()
	} else {
		f64()
	}
}

// unpack copies one segment of a packed backward result out as its own tensor: backward ops
// that produce several gradients in one pass (attention, DMC merge) return them concatenated.
type unpack struct {
	name   string
	off    int
	outDim tensor.Shape
}

func (u unpack) key() string {
	return fmt.Sprintf("Unpack{%s,off=%d,shape=%v}", u.name, u.off, u.outDim)
}
func (u unpack) signature() ([]arg, arg) {
	return []arg{vecArg}, arg{dims: len(u.outDim)}
}
func (u unpack) shape(in []tensor.Shape) (tensor.Shape, error) {
	if in[0].TotalSize() < u.off+u.outDim.TotalSize() {
		return nil, fmt.Errorf("%s: packed input of %d values is too short", u.key(), in[0].TotalSize())
	}
	return u.outDim.Clone(), nil
}
func (u unpack) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	n := u.outDim.TotalSize()
	dispatch(out.Dtype(), func() {
		copy(out.Float32s(), data[float32](in[0])[u.off:u.off+n])
	}, func() {
		copy(out.Float64s(), data[float64](in[0])[u.off:u.off+n])
	})
	return 0, nil
}

// unpackAll splits a packed node into segments of the given shapes.
func unpackAll(name string, packed *G.Node, shapes ...tensor.Shape) (G.Nodes, error) {
	res := make(G.Nodes, len(shapes))
	off := 0
	for i, s := range shapes {
		n, err := apply(unpack{name: name, off: off, outDim: s}, packed)
		if err != nil {
			return nil, err
		}
		res[i] = n
		off += s.TotalSize()
	}
	return res, nil
}
