// Package checkpoints reads and writes Llama checkpoints: llama2.c v0 .bin files, Hugging Face
// safetensors (single file or sharded), and Hugging Face Llama directories, including ones
// found in the Hugging Face hub cache.
//
// # Loading
//
// One call loads whatever a user points at, deciding by content rather than by file name:
//
//	w, from, err := checkpoints.Load("stories260K.bin")           // llama2.c v0 file
//	w, from, err := checkpoints.Load("./Llama-2-7b-hf")           // HF directory with config.json
//	w, from, err := checkpoints.Load("meta-llama/Llama-2-7b-hf")  // repo id, found in the HF cache
//	m := model.New(w)                                             // runs either RoPE layout
//
// LoadConfig does the same resolution but reads only the llama2.c header or config.json, so
// `dmc inspect` can describe a 70B model without touching its weights; Resolve reports just the
// format and path. Repo ids are looked up under $HF_HUB_CACHE, else $HF_HOME/hub, else
// ~/.cache/huggingface/hub, as models--ORG--NAME/snapshots/REV with REV from refs/main (else the
// only or newest snapshot). A resolution error lists where it looked.
//
// # RoPE layouts
//
// llama2.c weights load with model.RoPEInterleaved (pairs (2i, 2i+1)); Hugging Face weights load
// with model.RoPEHalf (pairs (i, i+D/2)). Both are exact; model.New runs either. WriteHF and
// WriteLlama2C convert between them by permuting the rows of wq and wk per head (WithRoPELayout),
// exactly as transformers' convert_llama_weights_to_hf.py does, so every written checkpoint
// computes the same function in the loader its format is meant for.
//
// # Writing
//
// WriteHF(dir, w, "bf16", map[string]any{"dmc": block}, 5<<30) writes config.json (the standard
// LlamaForCausalLM fields plus the extra top-level keys) and model.safetensors, or 5 GB shards
// with model.safetensors.index.json. ReadHFConfig returns the extra keys raw in HFConfig.Extra.
// config.json files of transformers 4 (rope_theta) and 5 (rope_parameters) are both read, and
// WriteHF writes both keys; checkpoints written here load in transformers' LlamaForCausalLM.
// WriteLlama2C writes the llama2.c v0 format; WriteSafetensors writes any float32 tensors as
// F32, F16 or BF16. Every file is written to a temporary file, synced and renamed into place.
//
// # Formats and conversions
//
// Safetensors files are validated as the reference implementation does (header size limit,
// known dtypes, sizes matching shapes, tensors tiling the data section with no gap, overlap or
// trailing byte) and read lazily: OpenSafetensors reads only the header and ReadFloat32 converts
// one tensor at a time from the file in bounded chunks (os.File.ReadAt), so a checkpoint is
// never held twice in memory. F32, F16, BF16 and F64 convert to float32; F16 goes through
// github.com/x448/float16 and BF16 is rounded to nearest even by hand (NaN stays NaN, overflow
// gives ±Inf, subnormals are kept).
//
// # Errors
//
// Files and user input never cause a panic: a truncated or corrupt file, a header whose sizes do
// not fit the file, a config that does not match the weights, an unsupported architecture or a
// missing tensor each return an error that says what is wrong (naming the file and tensor) and
// what to do. Every size read from a file is checked against the file's length before anything
// is allocated, so a corrupt header cannot trigger a huge allocation. Panics are reserved for
// programmer errors inside the package (an unconvertible dtype reaching the conversion kernels).
package checkpoints
