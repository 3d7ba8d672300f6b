// Package bpe trains a small byte-pair-encoding vocabulary on a text corpus and writes it in
// the llama2.c tokenizer.bin format, so the embedded demo can build its own tokenizer with no
// downloads and then load it through the same tokenizer code as real models.
//
// The vocabulary follows the llama2.c export of SentencePiece models: id 0 <unk>, 1 BOS,
// 2 EOS, 3..258 the byte-fallback pieces <0x00>..<0xFF>, then every character of the corpus,
// then the learned merges with score −rank, so that llama2.c's greedy highest-score merge
// reproduces the training merge order. Words start with a space (the dummy prefix), and merges
// never cross a word boundary.
//
// Errors are returned for I/O failures and impossible vocabulary sizes.
package bpe
