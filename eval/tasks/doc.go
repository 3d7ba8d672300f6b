// Package tasks is the downstream benchmark suite of dmc eval: loaders for the files users
// download (PIQA's jsonl + labels, HellaSwag's jsonl or six-line text, MMLU's csv folders, the
// llm-foundry jsonl of the other tasks), the prompts of lm-evaluation-harness (templates quoted
// in testdata/lm_eval_templates.md with where they come from), and its scoring: the summed
// log-likelihood of each continuation given its context, acc = argmax, acc_norm = argmax of the
// sum divided by the continuation's length in characters, LAMBADA accuracy (every target token
// greedy) and perplexity, and lm-eval's standard errors.
//
// Sequences longer than the model's context keep their newest tokens (lm-eval truncates on the
// left); a continuation longer than the whole context is scored on the tokens that keep a
// prefix inside it.
//
// A task turns a data folder into Items; an Item is one question with its choices as
// (context, continuation) pairs. Score evaluates Items with any Scorer (the model's real cache
// behind it: vanilla, DMC or a training-free policy); a fake Scorer with fixed log-likelihoods
// drives the conformance tests.
package tasks
