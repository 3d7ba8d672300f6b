// Package eval measures models: held-out perplexity computed by decoding with the real KV cache
// (vanilla or DMC-compressed) and the real compression rate it reaches (tokens / cache slots)
// overall, per layer and per KV head, plus result tables.
//
// Perplexity decodes every document from position 0 with a fresh cache, exactly as generation
// would, so a DMC model is scored with the same merges it makes when serving. Documents longer
// than the evaluation length are cut into consecutive chunks, each decoded from a fresh cache.
//
// ChannelAblation helps choose the DMC decision channel before a retrofit: it scores a base model
// with each q/k head channel removed the way a retrofit removes the repurposed one.
//
// Error policy: data and model errors are returned; shape bugs panic.
package eval
