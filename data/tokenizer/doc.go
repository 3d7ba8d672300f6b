// Package tokenizer reads Llama-family tokenizers and converts text to token ids and back.
//
// Two file formats are supported, behind one Tokenizer interface:
//
//   - llama2.c tokenizer.bin (int32 max_token_length, then per token float32 score, int32
//     length, bytes). Encoding reproduces llama2.c run.c encode exactly: a dummy-prefix
//     space before non-empty text, one symbol per UTF-8 codepoint found in the vocabulary
//     (else one byte token per byte, id = byte + 3), then repeated merging of the adjacent
//     pair with the best score (leftmost on ties; pairs scored at or below -1e10 never
//     merge). BOS is 1, EOS is 2.
//   - SentencePiece BPE .model files (Llama 1/2, Mistral, TinyLlama): the ModelProto is read
//     with protowire and encoded like sentencepiece's bpe_model.cc: identity normalization
//     with add_dummy_prefix and remove_extra_whitespaces honoured, user-defined pieces
//     atomic, unused pieces split back after merging, byte fallback (or one <unk> per run
//     of unknown characters). Unigram models and normalizers with a precompiled charsmap
//     (nmt_nfkc) are rejected with an error rather than tokenized approximately.
//
// Both use one merge engine (bpe.go). It reproduces the greedy order exactly: a pair
// scan per merge for short spans, a max-heap of candidate pairs for long ones, and merges
// looked up in a table keyed by the two piece ids. When no piece has a space right after
// a non-space (true of Llama 2 and tok512), no merge can cross such a position, so text is
// encoded word by word, and long texts reuse the tokens of repeated words. A multi-megabyte
// corpus is therefore encoded in one call. The tests check the result against a literal
// transcription of run.c's quadratic loop, against whole-text merging, and against
// github.com/eliben/go-sentencepiece. That library is not used at run time: it refuses
// Llama 2's normalizer options as is, and it panics on Llama 2 for any run of 16 or more
// spaces (a merge buffer sized by the longest piece), see sentencepiece.go.
//
// Decode is the exact inverse of Encode on any input (including invalid UTF-8): byte tokens
// produce raw bytes (not U+FFFD as sentencepiece's decoder does), control tokens nothing,
// <unk> the model's unknown surface (" ⁇ "), and the dummy-prefix space is removed once at
// the start. Piece gives the text of one token for streaming, and the pieces of an encoding
// concatenate to the decoded text.
//
// Error policy: Load, Parse and Find return errors for every problem with files and their
// contents (missing, truncated, garbage, unsupported model types); they never panic on any
// input, which FuzzLoad checks. Encode, Decode and Piece cannot fail: ids outside the
// vocabulary decode to U+FFFD. A Tokenizer is safe for concurrent use.
package tokenizer
