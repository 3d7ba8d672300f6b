package retrofit

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/tokenizer"
)

// OpenEvalData opens prepared shards or an Arrow dataset, or prepares a text, jsonl or parquet
// file on the fly with the tokenizer at tokPath (which must have vocab tokens). split ""
// picks the heldout split when there is one. The returned cleanup removes what was prepared.
func OpenEvalData(path, split, separator, tokPath string, vocab int) (*data.Dataset, func(), error) {
	return OpenEvalDataWith(path, EvalDataOptions{Split: split, Separator: separator, TokenizerPath: tokPath, Vocab: vocab})
}

// EvalDataOptions refine OpenEvalDataWith.
type EvalDataOptions struct {
	Split, Separator string
	TokenizerPath    string
	Vocab            int
	// TextField is the text field of .jsonl data (--text-field), TextColumn the text column of
	// Parquet, Arrow and Hugging Face data (--text-column); "" = the data package's defaults.
	TextField, TextColumn string
}

// OpenEvalDataWith is OpenEvalData with the text field or column to tokenise.
func OpenEvalDataWith(path string, o EvalDataOptions) (*data.Dataset, func(), error) {
	split, separator, tokPath, vocab := o.Split, o.Separator, o.TokenizerPath, o.Vocab
	cleanup := func() {}
	ext := strings.ToLower(filepath.Ext(path))
	var tok tokenizer.Tokenizer
	prepared := false // a text file tokenised into a temporary directory
	loadTok := func() error {
		if tokPath == "" {
			return fmt.Errorf("%s is text: pass --tokenizer (the one the model was trained with)", path)
		}
		t, err := tokenizer.Load(tokPath)
		if err != nil {
			return err
		}
		if t.VocabSize() != vocab {
			return fmt.Errorf("tokenizer %s has %d tokens but the model expects %d: pass the model's tokenizer", tokPath, t.VocabSize(), vocab)
		}
		tok = t
		return nil
	}
	if ext == ".txt" || ext == ".jsonl" || ext == ".parquet" || isTextFile(path) {
		if err := loadTok(); err != nil {
			return nil, cleanup, err
		}
		tmp, err := os.MkdirTemp("", "dmc-eval-")
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(tmp) }
		if _, err := data.Prepare(data.PrepareOptions{Inputs: []string{path}, Out: tmp, Tokenizer: tok, Separator: separator,
			TextField: o.TextField, TextColumn: o.TextColumn, Overwrite: true}); err != nil {
			return nil, cleanup, err
		}
		path, split, prepared = tmp, "train", true
	}
	if split == "" {
		if m, err := data.ReadManifest(path); err == nil {
			if s, ok := m.Splits["heldout"]; ok && s.Docs > 0 {
				split = "heldout"
			}
		}
	}
	opts := data.OpenOptions{Split: split}
	if col := cmp.Or(o.TextColumn, o.TextField); col != "" && !prepared {
		// A named text column of Arrow or HF data: tokenise it.
		if err := loadTok(); err != nil {
			return nil, cleanup, fmt.Errorf("text column %q: %w", col, err)
		}
		opts.TextColumn, opts.Tokenizer = col, tok
	}
	ds, err := data.OpenWith(path, opts)
	if err != nil {
		return nil, cleanup, err
	}
	if col, isText := ds.Column(); isText && opts.Tokenizer == nil {
		if err := loadTok(); err != nil {
			return nil, cleanup, fmt.Errorf("column %q holds text: %w", col, err)
		}
		opts.Tokenizer = tok
		if ds, err = data.OpenWith(path, opts); err != nil {
			return nil, cleanup, err
		}
	}
	return ds, cleanup, nil
}

// isTextFile reports a file whose content is text, jsonl or Parquet whatever its name
// (WikiText's wiki.valid.tokens, a README): it is tokenised like a .txt.
func isTextFile(path string) bool {
	if st, err := os.Stat(path); err != nil || st.IsDir() {
		return false
	}
	f, err := data.DetectFormat(path)
	return err == nil && (f == data.FormatTxt || f == data.FormatJSONL || f == data.FormatParquet)
}
