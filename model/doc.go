// Package model defines the Llama architecture (Config, presets, weights) and the pure-Go
// reference forward pass used as the oracle for every other executor.
//
// The forward supports grouped-query attention, RMSNorm, SwiGLU, tied or untied classifiers
// and both RoPE channel layouts (llama2.c interleaved pairs and Hugging Face rotate-half). It
// runs in float32 for inference and float64 for exactness tests (the type parameter T), and
// reads its attention memory through the KVCache interface, which both the vanilla cache here
// and the DMC compressed cache (package dmc) implement.
//
// Error policy: functions that take user input (configs, token ids, lengths) return errors
// that say what is wrong; shape mismatches between internal slices are programmer bugs and
// panic.
package model
