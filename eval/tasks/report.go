package tasks

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Report is the results JSON in lm-evaluation-harness's shape: results.<task>."acc,none",
// "acc_stderr,none", …, n-shot, versions, n-samples, and a config naming the model, the cache
// policy and its real compression rate.
type Report struct {
	Results  map[string]map[string]any `json:"results"`
	NShot    map[string]int            `json:"n-shot"`
	Versions map[string]string         `json:"versions"`
	NSamples map[string]map[string]int `json:"n-samples"`
	Config   map[string]any            `json:"config"`
}

// NewReport collects task results; config is copied into the report.
func NewReport(results []*Result, total map[string]int, config map[string]any) *Report {
	r := &Report{Results: map[string]map[string]any{}, NShot: map[string]int{}, Versions: map[string]string{},
		NSamples: map[string]map[string]int{}, Config: config}
	for _, res := range results {
		m := map[string]any{"alias": res.Task}
		put := func(name string, x *Metric) {
			if x == nil {
				return
			}
			m[name+",none"] = jsonFloat(x.Value)
			m[name+"_stderr,none"] = jsonFloat(x.Stderr)
		}
		if res.Perplexity != nil {
			put("perplexity", res.Perplexity)
		}
		acc := res.Acc
		put("acc", &acc)
		put("acc_norm", res.AccNorm)
		if res.CR > 0 {
			m["cr,none"] = jsonFloat(res.CR) // the cache's real compression rate on this task
		}
		r.Results[res.Task] = m
		r.NShot[res.Task] = res.NShot
		r.Versions[res.Task] = res.Version
		orig := total[res.Task]
		if orig == 0 {
			orig = res.N
		}
		r.NSamples[res.Task] = map[string]int{"original": orig, "effective": res.N}
	}
	return r
}

// jsonFloat keeps NaN out of JSON (lm-eval writes "N/A").
func jsonFloat(x float64) any {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "N/A"
	}
	return x
}

// WriteMarkdown writes the results as lm-eval's table: task, version, n-shot, metric, value,
// stderr.
func WriteMarkdown(w io.Writer, results []*Result) error {
	var b strings.Builder
	b.WriteString("| Task | Version | n-shot | Metric | Value | | Stderr |\n|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		row := func(name string, x *Metric) {
			if x != nil {
				fmt.Fprintf(&b, "| %s | %s | %d | %s | %.4f | ± | %.4f |\n", r.Task, r.Version, r.NShot, name, x.Value, x.Stderr)
			}
		}
		row("perplexity", r.Perplexity)
		acc := r.Acc
		row("acc", &acc)
		row("acc_norm", r.AccNorm)
		if r.CR > 0 {
			fmt.Fprintf(&b, "| %s | %s | %d | real CR | %.4f | | |\n", r.Task, r.Version, r.NShot, r.CR)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
