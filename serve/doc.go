// Package serve is dmc's OpenAI-compatible HTTP server: POST /v1/completions and
// /v1/chat/completions (streamed as server-sent events when asked), GET /v1/models, /health and
// /metrics (Prometheus text), on any model.Decoder — the pure-Go CPU decoder or the CUDA engine
// with its paged, DMC-compressed cache.
//
// One goroutine owns the decoder and batches continuously: between two decode steps it admits
// waiting requests (up to the batch limit; a request whose prompt and max_tokens exceed the
// context is refused with 400 at once), prefills them together, and drops finished or
// cancelled ones, whose cache is released at once. Handlers never block that loop: each
// request's events go to a channel with room for all of them, and a slow or vanished client
// only cancels its own request.
//
// Echoed prompt log-probabilities (echo with logprobs, as lm-evaluation-harness's
// local-completions model asks for them) are computed with the decoder's real cache, so a DMC
// model is scored with its compression, the same numbers as `dmc eval`.
package serve
