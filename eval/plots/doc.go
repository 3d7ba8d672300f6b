// Package plots draws the results JSONs of dmc eval as PNG files (gonum.org/v1/plot):
//
//   - ppl-vs-cr.png: held-out perplexity against the real compression rate (tokens / KV
//     slots), one colour per cache policy (dmc, window, streaming, h2o, tova; vanilla is the
//     CR = 1 point), one marker and line style per model. Each policy's line starts at the same
//     model's vanilla point, so the slope is what the compression costs that model.
//   - acc-vs-cr.png (all tasks, one panel each) and acc-vs-cr-TASK.png: a benchmark metric
//     (acc, or acc_norm) against the real CR, with ±1 standard-error bars where the file has
//     them. Points that share a CR are dodged horizontally (by at most ±2% of the CR) so that
//     their error bars stay visible.
//   - head-cr.png (head-cr-LABEL.png for several models): the real CR of every layer × KV head
//     of a DMC model, colour on a log₂ scale with a colour bar, each cell labelled with its CR.
//
// Load reads the three shapes dmc eval writes: a --compare file ({"rows": [{cache, ppl,
// real_cr, results}], "model"}), a benchmark file in lm-evaluation-harness's shape
// (results.TASK."acc,none", "acc_stderr,none", config.cache, config.real_cr, results.ppl), and
// a perplexity report (--tasks ppl: cache, ppl, cr, cr_per_head). Every row becomes a Run.
//
// Error policy: unreadable files and JSONs without the data a plot needs are returned as
// errors naming the file and the dmc eval command that produces the data.
package plots
