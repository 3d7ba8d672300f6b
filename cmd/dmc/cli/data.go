package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/retrofit"
)

func init() { register(newDataCmd) }

func newDataCmd(streams *IO) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Prepare and inspect training data (Arrow shards)",
		Long: `Prepare tokenises text (.txt with document separators, .jsonl, .parquet; text and JSON
lines also compressed with gzip, xz, zstd or bzip2) into Arrow shards with an input_ids
column, split into train/ and heldout/ with a manifest.json.
Inspect describes prepared shards, Arrow files/streams and Hugging Face save_to_disk folders.`,
	}
	cmd.AddCommand(newDataPrepareCmd(streams), newDataInspectCmd(streams))
	return cmd
}

// DataPrepareOptions are the flags of "dmc data prepare".
type DataPrepareOptions struct {
	Tokenizer    string
	Out          string
	Format       string
	Separator    string
	TextField    string
	HeldoutFrac  float64
	SplitByBytes float64
	HeldoutFiles float64
	Seed         uint64
	ShardSizeMB  int
	EOS          bool
	Force        bool
	Inputs       []string
	TextColumn   string
	Workers      int
	// Progress shows the progress line on stderr even when it is not a terminal.
	Progress bool

	splitByBytesGiven, heldoutFilesGiven bool
}

func newDataPrepareCmd(streams *IO) *cobra.Command {
	o := &DataPrepareOptions{}
	cmd := &cobra.Command{
		Use:   "prepare --tokenizer PATH --out DIR [flags] INPUT...",
		Short: "Tokenise text files into Arrow shards with a train/held-out split",
		Long: `Prepare tokenises the documents of the inputs into Arrow shards (train/, heldout/) with a
manifest.json. An INPUT is a file, a folder (read recursively in sorted path order, hidden
files skipped, files taken by extension) or a quoted glob pattern ('corpus/**/*.txt.xz':
*, ? and [...] within a folder, ** for any depth; matched files are recognised by content).
Files compressed with gzip, xz, zstd or bzip2 are decompressed as they are read (recognised
by their magic bytes; the format inside by the name less .gz/.xz/.zst/.bz2, else by content).

The held-out split is one of: --heldout-frac (documents, by a hash of the index; the default),
--heldout-files (whole files, by a hash of their path relative to the inputs' common folder)
or --split-by-bytes (documents starting in the first F of the bytes are train).
Tokenising runs on --workers goroutines; the output does not depend on their number.`,
		Example: `  dmc data prepare --tokenizer tok512.bin --out data/tiny --split-by-bytes 0.85 tinystories.txt
  dmc data prepare --tokenizer tokenizer.model --out data/web --text-field content corpus/
  dmc data prepare --tokenizer tok512.bin --out data/books --heldout-files 0.1 'gutenberg/**/*.txt.xz'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Inputs = args
			o.splitByBytesGiven = cmd.Flags().Changed("split-by-bytes")
			o.heldoutFilesGiven = cmd.Flags().Changed("heldout-files")
			var given []string
			for _, name := range []string{"heldout-frac", "heldout-files", "split-by-bytes"} {
				if cmd.Flags().Changed(name) {
					given = append(given, "--"+name)
				}
			}
			switch len(given) {
			case 2:
				return fmt.Errorf("give either %s or %s, not both: each is a split rule of its own (--heldout-frac: documents by a hash, --heldout-files: whole files, --split-by-bytes: by where documents start)", given[0], given[1])
			case 3:
				return errors.New("give one of --heldout-frac, --heldout-files and --split-by-bytes, not all three: each is a split rule of its own")
			}
			if o.splitByBytesGiven || o.heldoutFilesGiven {
				o.HeldoutFrac = 0
			}
			return o.Run(streams)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer file (SentencePiece tokenizer.model or llama2.c tokenizer.bin)")
	f.StringVar(&o.Out, "out", "", "output directory (gets train/, heldout/ and manifest.json)")
	f.StringVar(&o.Format, "format", "", "input format: txt, jsonl, parquet or arrow (default: by file extension, else by content; compression is recognised apart from it)")
	f.StringVar(&o.Separator, "separator", data.DefaultSeparator, "document separator in .txt inputs")
	f.StringVar(&o.TextField, "text-field", data.DefaultTextField, "text field of .jsonl inputs / text column of .parquet inputs")
	f.StringVar(&o.TextColumn, "text-column", "", "text column of Parquet and Arrow inputs and Hugging Face save_to_disk folders (default text, or the only string column)")
	f.Float64Var(&o.HeldoutFrac, "heldout-frac", data.DefaultHeldoutFrac, "fraction of documents held out (chosen by a hash of the document index and --seed); 0 = none")
	f.Float64Var(&o.SplitByBytes, "split-by-bytes", 0, "instead: documents starting in the first F of the input bytes are train, the rest held out (TinyStories uses 0.85)")
	f.Float64Var(&o.HeldoutFiles, "heldout-files", 0, "instead: hold out this fraction of the input files, whole (chosen by a hash of each path relative to the inputs' common folder and --seed; at least one)")
	f.Uint64Var(&o.Seed, "seed", 0, "seed of the --heldout-frac and --heldout-files assignments")
	f.IntVar(&o.Workers, "workers", runtime.GOMAXPROCS(0), "goroutines that tokenise (the output is the same for any number)")
	f.BoolVar(&o.Progress, "progress", false, "show the progress line on stderr even when it is not a terminal")
	f.IntVar(&o.ShardSizeMB, "shard-size-mb", data.DefaultShardBytes>>20, "start a new shard at about this many MiB")
	f.BoolVar(&o.EOS, "eos", false, "append EOS to every document (BOS is always prepended)")
	f.BoolVar(&o.Force, "force", false, "replace data prepared earlier in --out")
	return cmd
}

// Run prepares the shards and prints a summary.
func (o *DataPrepareOptions) Run(streams *IO) error {
	switch {
	case o.Tokenizer == "":
		return errors.New("no tokenizer: pass --tokenizer PATH (tokenizer.model or tokenizer.bin)")
	case o.Out == "":
		return errors.New("no output directory: pass --out DIR")
	case len(o.Inputs) == 0:
		return errors.New("no inputs: pass one or more .txt, .jsonl or .parquet files (text and jsonl may be .gz, .xz, .zst or .bz2), directories or quoted patterns ('corpus/**/*.txt.xz') after the flags")
	case o.ShardSizeMB < 1:
		return fmt.Errorf("--shard-size-mb must be ≥ 1 (MiB per shard), got %d", o.ShardSizeMB)
	case !finite(o.HeldoutFrac) || o.HeldoutFrac < 0 || o.HeldoutFrac >= 1:
		return fmt.Errorf("--heldout-frac must be in [0, 1) (the fraction of documents held out; 0 = none), got %g", o.HeldoutFrac)
	case o.splitByBytesGiven && (!finite(o.SplitByBytes) || o.SplitByBytes <= 0 || o.SplitByBytes >= 1):
		return fmt.Errorf("--split-by-bytes must be in (0, 1) (the fraction of the input bytes in train, e.g. 0.85), got %g", o.SplitByBytes)
	case o.heldoutFilesGiven && (!finite(o.HeldoutFiles) || o.HeldoutFiles <= 0 || o.HeldoutFiles >= 1):
		return fmt.Errorf("--heldout-files must be in (0, 1) (the fraction of the input files held out, e.g. 0.1), got %g", o.HeldoutFiles)
	case o.Workers < 1:
		return fmt.Errorf("--workers must be ≥ 1, got %d", o.Workers)
	}

	tok, err := tokenizer.Load(o.Tokenizer)
	if err != nil {
		return err
	}
	opts := data.PrepareOptions{
		Inputs: o.Inputs, Out: o.Out, Tokenizer: tok, TokenizerPath: o.Tokenizer,
		Format: o.Format, Separator: o.Separator, TextField: o.TextField, TextColumn: o.TextColumn, AddEOS: o.EOS,
		HeldoutFrac: o.HeldoutFrac, SplitByBytes: o.SplitByBytes, HeldoutFiles: o.HeldoutFiles, Seed: o.Seed,
		ShardBytes: int64(o.ShardSizeMB) << 20, Overwrite: o.Force, Workers: o.Workers,
	}
	var prog *prepareProgress
	if o.Progress || isTerminal(streams.Err) {
		prog = newPrepareProgress(streams.Err, prepareProgressEvery, time.Now)
		opts.Progress = prog.update
	}
	m, err := data.Prepare(opts)
	if prog != nil {
		prog.finish()
	}
	if err != nil {
		return err
	}
	var docs, tokens int64
	for _, s := range m.Splits {
		docs, tokens = docs+s.Docs, tokens+s.Tokens
	}
	out := streams.Out
	fmt.Fprintf(out, "prepared %s documents, %s tokens from %d file(s) into %s\n", retrofit.HumanCount(docs), retrofit.HumanCount(tokens), len(m.Sources), o.Out)
	fmt.Fprintf(out, "  %-8s %14s %16s %7s %11s\n", "split", "documents", "tokens", "shards", "size")
	for _, name := range []string{data.SplitTrain, data.SplitHeldout} {
		s := m.Splits[name]
		var size int64
		for _, sh := range s.Shards {
			size += sh.Bytes
		}
		fmt.Fprintf(out, "  %-8s %14d %16d %7d %11s\n", name, s.Docs, s.Tokens, len(s.Shards), humanBytes(size))
	}
	rule := "no held-out split"
	switch m.SplitRule.Kind {
	case "bytes":
		rule = fmt.Sprintf("documents starting in the first %g of the bytes are train", m.SplitRule.Value)
	case "fraction":
		rule = fmt.Sprintf("%g of the documents held out (seed %d)", m.SplitRule.Value, m.SplitRule.Seed)
	case data.SplitRuleFiles:
		var held []string
		for _, src := range m.Sources {
			if src.Split == data.SplitHeldout {
				held = append(held, filepath.Base(src.Path))
			}
		}
		rule = fmt.Sprintf("%d of %d files held out (fraction %g, seed %d): %s", len(held), len(m.Sources), m.SplitRule.Value,
			m.SplitRule.Seed, retrofit.Clip(strings.Join(held, ", "), 300))
	}
	fmt.Fprintf(out, "split: %s\ntokenizer: %s (vocab %d, %s)\nmanifest: %s\n", rule, o.Tokenizer, m.Tokenizer.VocabSize,
		m.Tokenizer.Fingerprint, filepath.Join(o.Out, data.ManifestName))
	if m.Splits[data.SplitTrain].Docs == 0 {
		fmt.Fprintln(streams.Err, "warning: the train split is empty; lower --heldout-frac or raise --split-by-bytes")
	}
	return nil
}

// prepareProgressEvery is how often the progress line of dmc data prepare is rewritten.
const prepareProgressEvery = 2 * time.Second

// prepareProgress draws the progress line of dmc data prepare, at most once per every
// (with the clock now, which tests replace).
type prepareProgress struct {
	w     io.Writer
	every time.Duration
	now   func() time.Time
	start time.Time
	last  time.Time
	shown bool
}

func newPrepareProgress(w io.Writer, every time.Duration, now func() time.Time) *prepareProgress {
	t := now()
	return &prepareProgress{w: w, every: every, now: now, start: t, last: t}
}

// update is the data.PrepareOptions.Progress callback (Prepare calls it from one goroutine
// at a time). The first line comes after one period, so short runs stay quiet.
func (p *prepareProgress) update(pr data.PrepareProgress) {
	if pr.Done {
		return
	}
	t := p.now()
	if t.Sub(p.last) < p.every {
		return
	}
	p.last = t
	fmt.Fprintf(p.w, "\r  %s   ", prepareLine(pr, t.Sub(p.start)))
	p.shown = true
}

// finish ends the line, if one was drawn.
func (p *prepareProgress) finish() {
	if p.shown {
		fmt.Fprintln(p.w)
	}
}

// prepareLine describes progress after elapsed: the share of the input bytes read (as
// stored, so compressed bytes for compressed files), the read rate, the documents and
// tokens written and the time left at that rate.
func prepareLine(pr data.PrepareProgress, elapsed time.Duration) string {
	pct := 100.0
	if pr.BytesTotal > 0 {
		pct = 100 * float64(pr.BytesDone) / float64(pr.BytesTotal)
	}
	sec := max(elapsed.Seconds(), 1e-9)
	rate := float64(pr.BytesDone) / sec
	eta := ""
	if pr.BytesDone > 0 && pr.BytesTotal > pr.BytesDone {
		eta = ", ETA " + (time.Duration(float64(pr.BytesTotal-pr.BytesDone) / rate * float64(time.Second))).Round(time.Second).String()
	}
	return fmt.Sprintf("%5.1f%% read (%s of %s, %.1f MB/s), file %d/%d, %s documents, %s tokens%s",
		pct, humanBytes(pr.BytesDone), humanBytes(pr.BytesTotal), rate/1e6, min(pr.FileIndex+1, pr.Files), pr.Files,
		shortCount(pr.Docs), shortCount(pr.Tokens), eta)
}

// shortCount writes n with a K/M/G suffix, for the progress line.
func shortCount(n int64) string {
	switch {
	case n < 1e3:
		return fmt.Sprint(n)
	case n < 1e6:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	case n < 1e9:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	}
	return fmt.Sprintf("%.2fG", float64(n)/1e9)
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// DataInspectOptions are the flags of "dmc data inspect".
type DataInspectOptions struct {
	Path       string
	Split      string
	TextColumn string
	Tokenizer  string
	EOS        bool
}

func newDataInspectCmd(streams *IO) *cobra.Command {
	o := &DataInspectOptions{}
	cmd := &cobra.Command{
		Use:   "inspect PATH[:SPLIT]",
		Short: "Describe Arrow shards, a prepared directory or a Hugging Face save_to_disk folder",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Path = args[0]
			return o.Run(streams)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Split, "split", "", "split of a DatasetDict or prepared directory (same as PATH:SPLIT)")
	f.StringVar(&o.TextColumn, "text-column", "", "string column to tokenise when there is no input_ids column")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer to count text tokens and decode the first row")
	f.BoolVar(&o.EOS, "eos", false, "append EOS when tokenising a text column")
	return cmd
}

// Run prints rows, columns, tokens and the first row.
func (o *DataInspectOptions) Run(streams *IO) error {
	opts := data.OpenOptions{Split: o.Split, TextColumn: o.TextColumn, AddEOS: o.EOS, AnyColumns: true}
	var tok tokenizer.Tokenizer
	if o.Tokenizer != "" {
		var err error
		if tok, err = tokenizer.Load(o.Tokenizer); err != nil {
			return err
		}
		opts.Tokenizer = tok
	}
	ds, err := data.OpenWith(o.Path, opts)
	if err != nil {
		return err
	}
	out := streams.Out
	row := func(k, v string) { fmt.Fprintf(out, "%-14s %s\n", k, v) }
	row("path", ds.Path)
	layout := ds.Layout
	if ds.Split != "" {
		layout += " (split " + ds.Split + ")"
	}
	row("layout", layout)
	files, strms := ds.Formats()
	row("shards", fmt.Sprintf("%d (%d Arrow IPC file, %d stream format), %d record batches", files+strms, files, strms, ds.NumBatches()))
	var cols []string
	for _, f := range ds.Schema.Fields() {
		cols = append(cols, fmt.Sprintf("%s %s", f.Name, f.Type))
	}
	row("columns", strings.Join(cols, ", "))
	if m := ds.Manifest; m != nil {
		row("tokenizer", fmt.Sprintf("%s (vocab %d, %s)", m.Tokenizer.Path, m.Tokenizer.VocabSize, m.Tokenizer.Fingerprint))
		for _, name := range []string{data.SplitTrain, data.SplitHeldout} {
			s := m.Splits[name]
			row("  "+name, fmt.Sprintf("%d documents, %d tokens, %d shards", s.Docs, s.Tokens, len(s.Shards)))
		}
	}

	col, isText := ds.Column()
	sum, err := retrofit.SummarizeData(ds)
	if err != nil {
		return err
	}
	rows, tokens, maxID, first, firstRaw := sum.Rows, sum.Tokens, sum.MaxID, sum.First, sum.FirstRaw
	rowText := fmt.Sprint(rows)
	if ds.DeclaredRows >= 0 && ds.DeclaredRows != rows {
		rowText += fmt.Sprintf(" (the metadata declares %d)", ds.DeclaredRows)
	}
	row("rows", rowText)
	switch {
	case ds.ColumnErr() != nil && col != "" && isText:
		row("token column", fmt.Sprintf("%s (text; pass --tokenizer to count tokens and decode)", col))
	case ds.ColumnErr() != nil:
		row("token column", "none: "+strings.TrimPrefix(ds.ColumnErr().Error(), "data: "))
	default:
		kind := "token ids"
		if isText {
			kind = "text, tokenised with " + o.Tokenizer
		}
		row("token column", fmt.Sprintf("%s (%s)", col, kind))
		mean := 0.0
		if rows > 0 {
			mean = float64(tokens) / float64(rows)
		}
		row("tokens", fmt.Sprintf("%s (%.1f per row), largest id %d", retrofit.HumanCount(tokens), mean, maxID))
		if tok != nil && int(maxID) >= tok.VocabSize() {
			fmt.Fprintf(streams.Err, "warning: token id %d is outside the tokenizer's vocabulary of %d\n", maxID, tok.VocabSize())
		}
	}
	switch {
	case tok != nil && rows > 0 && first != nil:
		ids := make([]int, len(first))
		for i, v := range first {
			ids[i] = int(v)
		}
		row("first row", fmt.Sprintf("%d tokens: %q", len(ids), retrofit.Clip(tok.Decode(ids), 300)))
	case first != nil:
		row("first row", fmt.Sprintf("%d tokens: %v (pass --tokenizer to decode)", len(first), clipIDs(first, 24)))
	case firstRaw != nil:
		row("first row", strings.Join(firstRaw, "\n"+strings.Repeat(" ", 15)))
	}
	return nil
}

func clipIDs(ids []int32, n int) string {
	if len(ids) <= n {
		return fmt.Sprint(ids)
	}
	return strings.TrimSuffix(fmt.Sprint(ids[:n]), "]") + " …]"
}
