// Package data turns text into training windows: it prepares Arrow shards from text, streams
// Arrow data back (prepared shards, Arrow IPC files and streams, Hugging Face save_to_disk
// folders) and packs documents into fixed-length windows with deterministic, resumable
// shuffling.
//
// # Prepare
//
// Prepare reads .txt (documents split by a separator, <|endoftext|> by default), .jsonl (a
// string field, "text" by default), .parquet (a string column, read one row group at a
// time) and Arrow data with a string column (Arrow IPC files and streams, Hugging Face
// save_to_disk folders, Dataset or DatasetDict, "DIR:SPLIT"; TextColumn, by default the
// column "text", else the only string column). A file named without a known extension is
// recognised by its content (DetectFormat: Arrow magic, Parquet magic, JSON lines, else UTF-8
// text), so WikiText's wiki.test.raw is text; bytes that are not UTF-8 text are refused with
// their offset. Text and JSON lines compressed with gzip, xz, zstd or bzip2 are recognised by
// their magic bytes and decompressed while streaming (the format inside by the name less
// .gz/.xz/.zst/.bz2, so book.txt.xz is text, else by content); other archives (zip, 7z, tar,
// lz4, ...) are refused with what to run. An input may be a file, a directory (walked in
// sorted path order) or a glob pattern (*, ?, [...] per segment, ** for any depth). Documents
// are tokenised on Workers goroutines and written in input order, so the output does not
// depend on their number. It tokenises each document with BOS first (EOS optional) and writes
//
//	OUT/manifest.json          tokenizer (path, vocab size, fingerprint), split rule, counts
//	OUT/train/shard-00000.arrow
//	OUT/heldout/shard-00000.arrow
//
// Shards are Arrow IPC file-format files with one column input_ids (list<int32>), one row
// per document, rotated at a size limit and renamed into place only when complete; the
// manifest is written last, so a directory with a manifest is whole. Everything is written
// to a temporary directory next to OUT and moved in only when complete; with Overwrite
// (--force) only the files the old manifest lists (Manifest.Files) are removed, and a
// directory holding files but no manifest is never overwritten. Documents go to
// train/held-out by a per-document hash (HeldoutFrac, Seed), by whole files (HeldoutFiles: a
// hash of each file's path relative to the inputs' common directory and Seed) or by where
// they start in the input bytes (SplitByBytes: the TinyStories convention of 0.85).
//
// # Reading
//
// Open/OpenWith accept a shard file in either IPC format, a directory of *.arrow files, a
// prepared directory (split "train" by default, "PATH:heldout" for the other), Hugging
// Face save_to_disk folders (state.json; DatasetDict with dataset_dict.json, "PATH:SPLIT")
// and single text, JSON lines or Parquet files (by name or content; tokenised on the fly,
// indexed in groups of documents so that packing can shuffle them).
// Tokens come from an input_ids column (list or large_list of int32/int64) or from a text
// column tokenised on the fly. Streams have no footer, so Open indexes the offset of every
// record batch from the message headers alone; any batch of any shard can then be read
// directly, one at a time.
//
// # Packing
//
// A Packer concatenates documents and cuts windows of SeqLen+1 tokens with stride SeqLen
// (every token is a target once). With Shuffle it visits the record batches in a seeded
// random order per epoch and shuffles the documents inside each group of GroupBatches
// batches, so memory holds GroupBatches batches, never the dataset. Its Position (epoch,
// group, document, offset) is JSON; a Packer built with it continues with exactly the
// windows the old one would have produced. Shuffles use a SplitMix64 generator of our own,
// so orders do not change with the Go release.
//
// # Errors
//
// Bad input (missing files, unknown formats, missing fields or columns, non-Arrow or
// truncated files, a position from other data) returns an error that names the problem and
// what to do; corrupt Arrow or Parquet data that makes the Arrow library panic is recovered
// and returned as an error too. The package panics only on programmer errors, such as a
// non-positive bound passed to an internal helper.
package data
