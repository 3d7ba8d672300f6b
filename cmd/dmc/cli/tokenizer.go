package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
)

func init() { register(newTokenizerCmd) }

func newTokenizerCmd(streams *IO) *cobra.Command {
	cmd := &cobra.Command{Use: "tokenizer", Short: "Train BPE tokenizers", Args: cobra.NoArgs}
	o := &retrofit.TokenizerTrainOptions{}
	train := &cobra.Command{
		Use:   "train --vocab N --out PATH FILE...",
		Short: "Learn a BPE vocabulary from text files (SentencePiece-compatible, byte fallback)",
		Long: `Learns a byte-fallback BPE vocabulary of --vocab pieces (<unk>, <s>, </s>, the 256 byte tokens,
the corpus's characters, then merges by frequency) from text files (plain or .gz/.xz/.zst/.bz2
compressed), folders or quoted glob patterns, as dmc demo does.
--out tokenizer.model writes a SentencePiece model (Hugging Face's LlamaTokenizer and the
sentencepiece library read it), --out tokenizer.bin the llama2.c format, and --out DIR both
plus tokenizer_config.json and special_tokens_map.json (AutoTokenizer.from_pretrained(DIR)).
The two formats encode identically. Training is single-threaded and quadratic in the number
of merges: meant for vocabularies of a few thousand pieces.`,
		Example: `  dmc tokenizer train --vocab 4096 --out tok/ corpus.txt
  dmc tokenizer train --vocab 512 --out tok512.model --separator '<|endoftext|>' stories.txt`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Inputs = args
			files, err := retrofit.TrainTokenizerFiles(*o)
			if err != nil {
				return err
			}
			for _, f := range files {
				fmt.Fprintln(streams.Out, f)
			}
			return nil
		},
	}
	f := train.Flags()
	f.IntVar(&o.Vocab, "vocab", 4096, "vocabulary size (≥ 300)")
	f.StringVar(&o.Out, "out", "", "tokenizer.model, tokenizer.bin, or a directory for the Hugging Face layout (required)")
	f.StringVar(&o.Separator, "separator", "<|endoftext|>", "document separator removed from the text before counting (empty: none)")
	f.IntVar(&o.MaxLen, "model-max-length", 4096, "model_max_length written to tokenizer_config.json")
	_ = train.MarkFlagRequired("out")
	cmd.AddCommand(train)
	return cmd
}
