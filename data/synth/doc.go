// Package synth generates a deterministic, self-contained English corpus of short stories for
// the embedded demo and for tests that must not depend on downloaded data.
//
// The stories come from a small grammar with names, places, objects and feelings that recur
// within a story (so a model must attend back to earlier tokens to predict them), separated by
// the TinyStories document separator. Output depends only on the seed.
package synth
