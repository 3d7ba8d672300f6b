package cli

import (
	"errors"
	"fmt"
	"path/filepath"
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
		Long: `Prepare tokenises text (.txt with document separators, .jsonl, .parquet) into Arrow
shards with an input_ids column, split into train/ and heldout/ with a manifest.json.
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
	Seed         uint64
	ShardSizeMB  int
	EOS          bool
	Force        bool
	Inputs       []string
	TextColumn   string

	splitByBytesGiven bool
}

func newDataPrepareCmd(streams *IO) *cobra.Command {
	o := &DataPrepareOptions{}
	cmd := &cobra.Command{
		Use:   "prepare --tokenizer PATH --out DIR [flags] INPUT...",
		Short: "Tokenise text files into Arrow shards with a train/held-out split",
		Example: `  dmc data prepare --tokenizer tok512.bin --out data/tiny --split-by-bytes 0.85 tinystories.txt
  dmc data prepare --tokenizer tokenizer.model --out data/web --text-field content corpus/`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Inputs = args
			o.splitByBytesGiven = cmd.Flags().Changed("split-by-bytes")
			if o.splitByBytesGiven {
				if cmd.Flags().Changed("heldout-frac") {
					return errors.New("give either --heldout-frac or --split-by-bytes, not both")
				}
				o.HeldoutFrac = 0
			}
			return o.Run(streams)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer file (SentencePiece tokenizer.model or llama2.c tokenizer.bin)")
	f.StringVar(&o.Out, "out", "", "output directory (gets train/, heldout/ and manifest.json)")
	f.StringVar(&o.Format, "format", "", "input format: txt, jsonl or parquet (default: by file extension)")
	f.StringVar(&o.Separator, "separator", data.DefaultSeparator, "document separator in .txt inputs")
	f.StringVar(&o.TextField, "text-field", data.DefaultTextField, "text field of .jsonl inputs / text column of .parquet inputs")
	f.StringVar(&o.TextColumn, "text-column", "", "text column of Parquet and Arrow inputs and Hugging Face save_to_disk folders (default text, or the only string column)")
	f.Float64Var(&o.HeldoutFrac, "heldout-frac", data.DefaultHeldoutFrac, "fraction of documents held out (chosen by a hash of the document index and --seed); 0 = none")
	f.Float64Var(&o.SplitByBytes, "split-by-bytes", 0, "instead: documents starting in the first F of the input bytes are train, the rest held out (TinyStories uses 0.85)")
	f.Uint64Var(&o.Seed, "seed", 0, "seed of the --heldout-frac assignment")
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
		return errors.New("no inputs: pass one or more .txt, .jsonl or .parquet files or directories after the flags")
	case o.ShardSizeMB < 1:
		return fmt.Errorf("--shard-size-mb must be ≥ 1 (MiB per shard), got %d", o.ShardSizeMB)
	case !finite(o.HeldoutFrac) || o.HeldoutFrac < 0 || o.HeldoutFrac >= 1:
		return fmt.Errorf("--heldout-frac must be in [0, 1) (the fraction of documents held out; 0 = none), got %g", o.HeldoutFrac)
	case o.splitByBytesGiven && (!finite(o.SplitByBytes) || o.SplitByBytes <= 0 || o.SplitByBytes >= 1):
		return fmt.Errorf("--split-by-bytes must be in (0, 1) (the fraction of the input bytes in train, e.g. 0.85), got %g", o.SplitByBytes)
	}

	tok, err := tokenizer.Load(o.Tokenizer)
	if err != nil {
		return err
	}
	prog := newProgressLine(streams.Err, "")
	prog.last = time.Now() // quiet for short runs
	m, err := data.Prepare(data.PrepareOptions{
		Inputs: o.Inputs, Out: o.Out, Tokenizer: tok, TokenizerPath: o.Tokenizer,
		Format: o.Format, Separator: o.Separator, TextField: o.TextField, TextColumn: o.TextColumn, AddEOS: o.EOS,
		HeldoutFrac: o.HeldoutFrac, SplitByBytes: o.SplitByBytes, Seed: o.Seed,
		ShardBytes: int64(o.ShardSizeMB) << 20, Overwrite: o.Force, Progress: func(pr data.PrepareProgress) {
			if !pr.Done {
				prog.printf(func() string { return prepareLine(pr) })
			}
		},
	})
	prog.done()
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
	}
	fmt.Fprintf(out, "split: %s\ntokenizer: %s (vocab %d, %s)\nmanifest: %s\n", rule, o.Tokenizer, m.Tokenizer.VocabSize,
		m.Tokenizer.Fingerprint, filepath.Join(o.Out, data.ManifestName))
	if m.Splits[data.SplitTrain].Docs == 0 {
		fmt.Fprintln(streams.Err, "warning: the train split is empty; lower --heldout-frac or raise --split-by-bytes")
	}
	return nil
}

func prepareLine(pr data.PrepareProgress) string {
	pct := 100.0
	if pr.BytesTotal > 0 {
		pct = 100 * float64(pr.BytesDone) / float64(pr.BytesTotal)
	}
	return fmt.Sprintf("%5.1f%% of %s, file %d/%d, %d documents, %d tokens", pct, humanBytes(pr.BytesTotal), pr.FileIndex+1, pr.Files, pr.Docs, pr.Tokens)
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
