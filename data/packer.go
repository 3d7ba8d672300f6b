package data

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"

	"github.com/apache/arrow/go/v17/arrow"
)

// DefaultGroupBatches is how many record batches a Packer shuffles together.
const DefaultGroupBatches = 8

// PackerOptions configures a Packer.
type PackerOptions struct {
	SeqLen int // window length is SeqLen+1 tokens (inputs and shifted targets)
	// Shuffle visits the record batches of all shards in a random order per epoch and
	// shuffles the documents within each group of GroupBatches consecutive batches of that
	// order. Without it documents come in storage order.
	Shuffle      bool
	Seed         uint64
	GroupBatches int // 0 means DefaultGroupBatches; memory holds this many batches
	// Epochs stops after this many passes (the last partial window is dropped); 0 = forever.
	Epochs int
	// Resume continues from a Position saved by an earlier Packer over the same data
	// with the same Shuffle, Seed and GroupBatches.
	Resume *Position
}

// Window is SeqLen+1 consecutive tokens of the packed stream: Inputs are Tokens[:SeqLen]
// and Targets are Tokens[1:]. Windows follow each other with a stride of SeqLen, so every
// token is a target exactly once; documents are concatenated (each starts with BOS).
type Window struct {
	Tokens []int
}

// Inputs returns the model inputs of the window.
func (w Window) Inputs() []int { return w.Tokens[:len(w.Tokens)-1] }

// Targets returns the next-token targets of the window.
func (w Window) Targets() []int { return w.Tokens[1:] }

// Position is where a Packer's next window starts. It is plain JSON so that a training
// checkpoint can store it; a Packer created with it continues exactly where the old one was.
// It does not depend on SeqLen, so a run may resume with another sequence length (the
// stream of tokens continues; the windows are then cut differently).
type Position struct {
	Epoch   int    `json:"epoch"`
	Group   int    `json:"group"`  // group of batches within the epoch's order
	Doc     int    `json:"doc"`    // document within the group's order
	Offset  int    `json:"offset"` // token within that document
	Windows int64  `json:"windows"`
	Check   string `json:"check"` // identifies the data layout and the shuffle settings
}

// Packer cuts the concatenated documents of a Dataset into fixed-length windows. It holds
// at most GroupBatches record batches and an index of (shard, batch) pairs in memory. A
// Packer is not safe for concurrent use; several Packers may share one Dataset.
type Packer struct {
	ds    *Dataset
	opts  PackerOptions
	check string

	blocks   []blockRef // every (shard, batch) of the dataset, in storage order
	order    []int32    // this epoch's order of blocks
	numGroup int

	br      *batchReader
	recs    []arrow.Record
	cols    []*docColumn
	docs    []docRef // this group's document order
	pos     Position
	cur     []int32 // tokens of docs[pos.Doc]
	scratch []int32

	epochTokens int64 // tokens taken since the epoch started, to detect an empty dataset
	err         error
}

type blockRef struct{ shard, batch int32 }

type docRef struct{ block, row int32 }

// NewPacker starts packing ds (or resumes at opts.Resume).
func NewPacker(ds *Dataset, opts PackerOptions) (*Packer, error) {
	if opts.SeqLen < 1 {
		return nil, fmt.Errorf("data: sequence length %d must be at least 1", opts.SeqLen)
	}
	if opts.GroupBatches <= 0 {
		opts.GroupBatches = DefaultGroupBatches
	}
	if !opts.Shuffle {
		opts.GroupBatches = 1 // nothing to mix; keep the memory at one batch
	}
	if ds.columnErr != nil {
		return nil, ds.columnErr
	}
	p := &Packer{ds: ds, opts: opts, br: &batchReader{d: ds, shard: -1}}
	for si, s := range ds.shards {
		for b := 0; b < s.numBatches; b++ {
			p.blocks = append(p.blocks, blockRef{int32(si), int32(b)})
		}
	}
	if len(p.blocks) == 0 {
		return nil, fmt.Errorf("data: %s has no record batches to pack", ds.Path)
	}
	p.numGroup = (len(p.blocks) + opts.GroupBatches - 1) / opts.GroupBatches
	p.check = p.layoutCheck()
	start := Position{Check: p.check}
	if opts.Resume != nil {
		start = *opts.Resume
		if start.Check != p.check {
			return nil, errors.New("data: the saved data position belongs to other data or other shuffle settings (seed, shuffle, group size); resume with the same dataset and settings or start afresh")
		}
		if start.Epoch < 0 || start.Group < 0 || start.Group >= p.numGroup || start.Doc < 0 || start.Offset < 0 {
			return nil, fmt.Errorf("data: the saved data position %+v is out of range for %s", start, ds.Path)
		}
	}
	p.pos = start
	p.epochOrder()
	if err := p.loadGroup(); err != nil {
		p.Close()
		return nil, err
	}
	if p.pos.Doc > len(p.docs) || (p.pos.Doc < len(p.docs) && p.pos.Offset > len(p.cur)) {
		p.Close()
		return nil, fmt.Errorf("data: the saved data position %+v is out of range for %s", start, ds.Path)
	}
	return p, nil
}

// layoutCheck hashes what a Position depends on: the batch structure and shuffle settings.
func (p *Packer) layoutCheck() string {
	h := sha256.New()
	var buf [8]byte
	put := func(v uint64) {
		binary.LittleEndian.PutUint64(buf[:], v)
		h.Write(buf[:])
	}
	put(uint64(len(p.ds.shards)))
	for _, s := range p.ds.shards {
		put(uint64(s.numBatches))
	}
	if p.opts.Shuffle {
		put(1)
		put(p.opts.Seed)
		put(uint64(p.opts.GroupBatches))
	}
	h.Write([]byte(p.ds.column))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (p *Packer) epochOrder() {
	if !p.opts.Shuffle {
		if p.order == nil {
			p.order = make([]int32, len(p.blocks))
			for i := range p.order {
				p.order[i] = int32(i)
			}
		}
		return
	}
	p.order = newSplitMix(p.opts.Seed, 1, uint64(p.pos.Epoch)).perm(len(p.blocks))
}

// loadGroup reads the batches of group pos.Group and orders its documents.
func (p *Packer) loadGroup() error {
	p.releaseGroup()
	lo := p.pos.Group * p.opts.GroupBatches
	hi := min(lo+p.opts.GroupBatches, len(p.order))
	for _, bi := range p.order[lo:hi] {
		b := p.blocks[bi]
		rec, err := p.br.read(int(b.shard), int(b.batch))
		if err != nil {
			return err
		}
		p.recs = append(p.recs, rec)
		col := p.ds.docColumn(rec)
		for r := 0; r < col.len(); r++ {
			p.docs = append(p.docs, docRef{int32(len(p.cols)), int32(r)})
		}
		p.cols = append(p.cols, col)
	}
	if p.opts.Shuffle {
		rng := newSplitMix(p.opts.Seed, 2, uint64(p.pos.Epoch), uint64(p.pos.Group))
		for i := len(p.docs) - 1; i > 0; i-- {
			j := rng.intn(i + 1)
			p.docs[i], p.docs[j] = p.docs[j], p.docs[i]
		}
	}
	return p.loadDoc()
}

func (p *Packer) loadDoc() error {
	p.cur = nil
	if p.pos.Doc >= len(p.docs) {
		return nil
	}
	d := p.docs[p.pos.Doc]
	var err error
	p.cur, p.scratch, err = p.cols[d.block].tokens(int(d.row), p.scratch)
	return err
}

func (p *Packer) releaseGroup() {
	for _, r := range p.recs {
		r.Release()
	}
	p.recs, p.cols, p.docs = p.recs[:0], p.cols[:0], p.docs[:0]
}

// advance moves to the next document, crossing groups and epochs. It returns io.EOF after
// the last epoch.
func (p *Packer) advance() error {
	p.pos.Doc++
	p.pos.Offset = 0
	for p.pos.Doc >= len(p.docs) {
		p.pos.Doc = 0
		p.pos.Group++
		if p.pos.Group >= p.numGroup {
			if p.epochTokens == 0 {
				return fmt.Errorf("data: %s holds no tokens to pack", p.ds.Path)
			}
			p.pos.Group = 0
			p.pos.Epoch++
			p.epochTokens = 0
			if p.opts.Epochs > 0 && p.pos.Epoch >= p.opts.Epochs {
				return io.EOF
			}
			p.epochOrder()
		}
		if err := p.loadGroup(); err != nil {
			return err
		}
		if len(p.docs) > 0 {
			return nil
		}
	}
	return p.loadDoc()
}

// Next returns the next window, or io.EOF when Epochs passes are done.
func (p *Packer) Next() (Window, error) {
	if p.err != nil {
		return Window{}, p.err
	}
	w := make([]int, 0, p.opts.SeqLen+1)
	for {
		if p.pos.Doc < len(p.docs) && p.pos.Offset < len(p.cur) {
			n := min(p.opts.SeqLen+1-len(w), len(p.cur)-p.pos.Offset)
			for _, t := range p.cur[p.pos.Offset : p.pos.Offset+n] {
				w = append(w, int(t))
			}
			p.pos.Offset += n
			p.epochTokens += int64(n)
			if len(w) == p.opts.SeqLen+1 {
				// The last token is the first input of the next window.
				p.pos.Offset--
				p.epochTokens--
				p.pos.Windows++
				return Window{Tokens: w}, nil
			}
			continue
		}
		if err := p.advance(); err != nil {
			p.err = err
			return Window{}, err
		}
	}
}

// Windows iterates over the remaining windows; it ends after Epochs passes (or on an
// error, which it yields).
func (p *Packer) Windows() iter.Seq2[Window, error] {
	return func(yield func(Window, error) bool) {
		for {
			w, err := p.Next()
			if err == io.EOF {
				return
			}
			if !yield(w, err) || err != nil {
				return
			}
		}
	}
}

// Position returns where the next window starts.
func (p *Packer) Position() Position { return p.pos }

// Close releases the batches held by the packer.
func (p *Packer) Close() error {
	p.releaseGroup()
	p.br.close()
	return nil
}
