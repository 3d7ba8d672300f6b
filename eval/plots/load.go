package plots

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Run is one model evaluated with one cache policy: a row of a --compare file, or a whole
// dmc eval --json file.
type Run struct {
	File   string // the JSON it came from
	Label  string // names the model in legends: the LABEL= of the input, else the model's base name
	Model  string // the model as the file names it
	Policy string // the cache: vanilla, dmc, window, streaming, h2o, tova, …
	// CR is the real compression rate (tokens / KV slots) measured with this cache; 0 when the
	// file does not say (a vanilla cache is 1).
	CR float64
	// PPL is the held-out perplexity; 0 when not measured.
	PPL float64
	// Tasks holds the benchmark scores: task → metric (acc, acc_norm, …) → score.
	Tasks map[string]map[string]Score
	// PerHeadCR is the real CR of every [layer][KV head]; nil when the file has none.
	PerHeadCR [][]float64
}

// Score is one benchmark metric with its standard error (NaN when the file has none).
type Score struct {
	Value, Stderr float64
}

// Input is one file to plot and the label of its model (empty: derived from the file).
type Input struct {
	Path, Label string
}

// ParseInput reads a command-line argument: FILE.json, or LABEL=FILE.json to name the model
// in the legends. An argument that is an existing file is always a path.
func ParseInput(arg string) Input {
	if _, err := os.Stat(arg); err == nil {
		return Input{Path: arg}
	}
	if label, path, ok := strings.Cut(arg, "="); ok && label != "" && !strings.ContainsRune(label, filepath.Separator) {
		return Input{Path: path, Label: label}
	}
	return Input{Path: arg}
}

// LoadAll reads every input, in order.
func LoadAll(inputs []Input) ([]Run, error) {
	if len(inputs) == 0 {
		return nil, errors.New("no results JSON given: pass one or more files written by dmc eval --json")
	}
	var runs []Run
	for _, in := range inputs {
		rs, err := Load(in)
		if err != nil {
			return nil, err
		}
		runs = append(runs, rs...)
	}
	return runs, nil
}

// Load reads one results JSON of dmc eval: a --compare file gives one Run per row, the other
// shapes one Run.
func Load(in Input) ([]Run, error) {
	b, err := os.ReadFile(in.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("file %s does not exist", in.Path)
	}
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("file %s is not a JSON object: %v", in.Path, err)
	}
	has := func(k string) bool { _, ok := doc[k]; return ok }
	var runs []Run
	switch {
	case has("rows"):
		runs, err = loadCompare(in.Path, doc)
	case has("results"):
		runs, err = loadHarness(in.Path, doc)
	case has("ppl_result") || has("cr_per_head") || has("cache"):
		runs, err = loadPPL(in.Path, doc)
	default:
		return nil, fmt.Errorf("file %s is not a results JSON of dmc eval: it has no rows (--compare), results (benchmarks) or ppl_result (--tasks ppl)", in.Path)
	}
	if err != nil {
		return nil, err
	}
	for i := range runs {
		r := &runs[i]
		r.File = in.Path
		r.Label = in.Label
		if r.Label == "" {
			r.Label = modelLabel(r.Model, in.Path)
		}
		if r.CR == 0 && r.Policy == "vanilla" {
			r.CR = 1
		}
		if err := r.check(); err != nil {
			return nil, err
		}
	}
	return runs, nil
}

// loadCompare reads dmc eval --compare --json: {"rows": [{cache, ppl, real_cr, results}], "model"}.
func loadCompare(path string, doc map[string]any) ([]Run, error) {
	rows, ok := doc["rows"].([]any)
	if !ok {
		return nil, fmt.Errorf("file %s: rows is not a list of cache policies", path)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("file %s has no rows: the --compare run it comes from evaluated no cache", path)
	}
	model, _ := doc["model"].(string)
	var runs []Run
	for i, x := range rows {
		row, ok := x.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("file %s: rows[%d] is not an object", path, i)
		}
		r := Run{Model: model, Policy: str(row["cache"]), PPL: num(row["ppl"]), CR: num(row["real_cr"])}
		if r.Policy == "" {
			return nil, fmt.Errorf("file %s: rows[%d] has no cache", path, i)
		}
		if res, ok := row["results"].(map[string]any); ok {
			r.Tasks = tasksOf(res)
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// loadHarness reads the lm-evaluation-harness shape of dmc eval --tasks BENCHMARKS --json.
func loadHarness(path string, doc map[string]any) ([]Run, error) {
	res, ok := doc["results"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("file %s: results is not an object", path)
	}
	cfg, _ := doc["config"].(map[string]any)
	r := Run{Model: str(cfg["model"]), Policy: str(cfg["cache"]), CR: num(cfg["real_cr"]), Tasks: tasksOf(res)}
	if ppl, ok := res["ppl"].(map[string]any); ok {
		r.PPL = num(ppl["perplexity,none"])
		if r.CR == 0 {
			r.CR = num(ppl["cr,none"])
		}
	}
	if r.CR == 0 { // without a ppl run, the cache's real CR per task (cr,none): their mean
		var sum float64
		var n int
		for _, x := range res {
			if m, ok := x.(map[string]any); ok {
				if cr := num(m["cr,none"]); cr > 0 {
					sum, n = sum+cr, n+1
				}
			}
		}
		if n > 0 {
			r.CR = sum / float64(n)
		}
	}
	if r.Policy == "" {
		return nil, fmt.Errorf("file %s has no config.cache: it is not a results JSON of dmc eval", path)
	}
	return []Run{r}, nil
}

// loadPPL reads the report of dmc eval --tasks ppl --json.
func loadPPL(path string, doc map[string]any) ([]Run, error) {
	r := Run{Model: str(doc["model"]), Policy: str(doc["cache"]), PPL: num(doc["ppl"]), CR: num(doc["cr"])}
	heads := doc["cr_per_head"]
	if pr, ok := doc["ppl_result"].(map[string]any); ok {
		if r.PPL == 0 {
			r.PPL = num(pr["ppl"])
		}
		if r.CR == 0 {
			r.CR = num(pr["cr"])
		}
		if heads == nil {
			heads = pr["cr_per_head"]
		}
	}
	if r.Policy == "" {
		return nil, fmt.Errorf("file %s has no cache: it is not a results JSON of dmc eval", path)
	}
	if heads != nil {
		rows, ok := heads.([]any)
		if !ok {
			return nil, fmt.Errorf("file %s: cr_per_head is not a list of layers", path)
		}
		for l, x := range rows {
			hs, ok := x.([]any)
			if !ok {
				return nil, fmt.Errorf("file %s: cr_per_head[%d] is not a list of heads", path, l)
			}
			row := make([]float64, len(hs))
			for h, v := range hs {
				f, ok := v.(float64)
				if !ok {
					return nil, fmt.Errorf("file %s: cr_per_head[%d][%d] is not a number", path, l, h)
				}
				row[h] = f
			}
			r.PerHeadCR = append(r.PerHeadCR, row)
		}
	}
	return []Run{r}, nil
}

// check refuses numbers no evaluation produces.
func (r *Run) check() error {
	bad := func(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) || x < 0 }
	if bad(r.CR) || (r.CR > 0 && r.CR < 1) {
		return fmt.Errorf("file %s: %s cache has real CR %g; a compression rate is ≥ 1", r.File, r.Policy, r.CR)
	}
	if bad(r.PPL) {
		return fmt.Errorf("file %s: %s cache has perplexity %g", r.File, r.Policy, r.PPL)
	}
	if r.PerHeadCR == nil {
		return nil
	}
	if len(r.PerHeadCR) == 0 || len(r.PerHeadCR[0]) == 0 {
		return fmt.Errorf("file %s: cr_per_head is empty", r.File)
	}
	for l, hs := range r.PerHeadCR {
		if len(hs) != len(r.PerHeadCR[0]) {
			return fmt.Errorf("file %s: cr_per_head is not a layers × heads table: layer %d has %d heads, layer 0 has %d", r.File, l, len(hs), len(r.PerHeadCR[0]))
		}
		for h, c := range hs {
			if bad(c) || c < 1 {
				return fmt.Errorf("file %s: cr_per_head[%d][%d] is %g; a compression rate is ≥ 1", r.File, l, h, c)
			}
		}
	}
	return nil
}

// tasksOf reads lm-eval's results: TASK → {"METRIC,none": value, "METRIC_stderr,none": se}.
// The ppl pseudo-task of dmc eval is not a benchmark; "N/A" values are left out.
func tasksOf(res map[string]any) map[string]map[string]Score {
	out := map[string]map[string]Score{}
	for task, x := range res {
		m, ok := x.(map[string]any)
		if !ok || task == "ppl" {
			continue
		}
		scores := map[string]Score{}
		for k, v := range m {
			name, ok := strings.CutSuffix(k, ",none")
			f, isNum := v.(float64)
			if !ok || !isNum || strings.HasSuffix(name, "_stderr") || name == "cr" {
				continue // cr,none is the cache's compression on the task, not a score
			}
			se := math.NaN()
			if s, ok := m[name+"_stderr,none"].(float64); ok {
				se = s
			}
			scores[name] = Score{Value: f, Stderr: se}
		}
		if len(scores) > 0 {
			out[task] = scores
		}
	}
	return out
}

// modelLabel names a model by its path's last element ("/tmp/r3/cr4 (step-0008000)" →
// "cr4 (step-0008000)"), else by the file.
func modelLabel(model, file string) string {
	if model != "" {
		return filepath.Base(model)
	}
	return strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
}

func str(x any) string {
	s, _ := x.(string)
	return s
}

func num(x any) float64 {
	f, _ := x.(float64)
	return f
}

// Tasks lists the benchmarks that have metric in any run, in the order dmc eval --help
// lists them, then the others by name.
func Tasks(runs []Run, metric string) []string {
	seen := map[string]bool{}
	for _, r := range runs {
		for t, m := range r.Tasks {
			if _, ok := m[metric]; ok {
				seen[t] = true
			}
		}
	}
	var out []string
	for _, t := range taskOrder {
		if seen[t] {
			out = append(out, t)
			delete(seen, t)
		}
	}
	var rest []string
	for t := range seen {
		rest = append(rest, t)
	}
	sort.Strings(rest)
	return append(out, rest...)
}

var taskOrder = []string{"piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "boolq",
	"lambada_openai", "openbookqa", "copa", "siqa", "mmlu"}
