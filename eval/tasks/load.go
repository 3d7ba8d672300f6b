package tasks

import (
	"bufio"
	"compress/bzip2"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// open opens the first of the candidate files that exists (with transparent .bz2), naming them
// all when none does.
func open(root string, candidates ...string) (io.ReadCloser, string, error) {
	for _, c := range candidates {
		p := filepath.Join(root, c)
		f, err := os.Open(p)
		if err == nil {
			if strings.HasSuffix(p, ".bz2") {
				return struct {
					io.Reader
					io.Closer
				}{bzip2.NewReader(f), f}, p, nil
			}
			return f, p, nil
		}
	}
	return nil, "", fmt.Errorf("none of %s exists under %s: pass --data-dir (or $DMC_EVAL_DATA) naming a folder laid out as ../shared/assets", strings.Join(candidates, ", "), root)
}

// jsonLines decodes every non-empty line of a jsonl file into a fresh T, calling fn with the
// line number; errors name the file and line.
func jsonLines[T any](r io.Reader, path string, fn func(line int, v T) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	line := 0
	for sc.Scan() {
		line++
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		var v T
		dec := json.NewDecoder(strings.NewReader(b))
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("%s:%d: %v", path, line, err)
		}
		if err := fn(line, v); err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if line == 0 {
		return fmt.Errorf("%s: no items", path)
	}
	return nil
}

func checkGold(gold, n int) error {
	if n < 2 {
		return fmt.Errorf("%d choices; a multiple-choice item needs at least 2", n)
	}
	if gold < 0 || gold >= n {
		return fmt.Errorf("label %d is out of range for %d choices", gold, n)
	}
	return nil
}

func src(path string, line int) string { return fmt.Sprintf("%s:%d", filepath.Base(path), line) }

// foundry is one line of the llm-foundry jsonl files.
type foundry struct {
	Query          *string  `json:"query"`
	Choices        []string `json:"choices"`
	Gold           *int     `json:"gold"`
	Context        *string  `json:"context"`
	Continuation   *string  `json:"continuation"`
	ContextOptions []string `json:"context_options"`
}

func (f foundry) need(fields ...string) error {
	for _, n := range fields {
		missing := false
		switch n {
		case "query":
			missing = f.Query == nil
		case "choices":
			missing = f.Choices == nil
		case "gold":
			missing = f.Gold == nil
		case "context":
			missing = f.Context == nil
		case "continuation":
			missing = f.Continuation == nil
		case "context_options":
			missing = f.ContextOptions == nil
		}
		if missing {
			return fmt.Errorf("missing field %q", n)
		}
	}
	return nil
}

// loadFoundry reads eval-llmfoundry/<name>.jsonl and turns each line into an Item with build.
func loadFoundry(root, name string, fields []string, build func(f foundry) (Item, error)) ([]Item, error) {
	r, path, err := open(root, "eval-llmfoundry/"+name+".jsonl", name+".jsonl")
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var items []Item
	err = jsonLines(r, path, func(line int, f foundry) error {
		if err := f.need(fields...); err != nil {
			return err
		}
		it, err := build(f)
		if err != nil {
			return err
		}
		it.Source = src(path, line)
		items = append(items, it)
		return nil
	})
	return items, err
}

// ---- PIQA: the original valid.jsonl + valid-labels.lst, else the llm-foundry file.

type piqaDoc struct {
	Goal, Sol1, Sol2 string
	Label            int
	Source           string
}

func loadPIQA(root string) ([]piqaDoc, error) {
	f, path, err := open(root, "piqa/valid.jsonl")
	if err != nil {
		return loadPIQAFoundry(root)
	}
	defer f.Close()
	lf, lpath, err := open(root, "piqa/valid-labels.lst")
	if err != nil {
		return nil, fmt.Errorf("%s needs its labels file: %w", path, err)
	}
	defer lf.Close()
	var labels []int
	sc := bufio.NewScanner(lf)
	for ln := 1; sc.Scan(); ln++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		v, err := strconv.Atoi(s)
		if err != nil || (v != 0 && v != 1) {
			return nil, fmt.Errorf("%s:%d: label %q is not 0 or 1", lpath, ln, s)
		}
		labels = append(labels, v)
	}
	var docs []piqaDoc
	err = jsonLines(f, path, func(line int, d struct {
		Goal *string `json:"goal"`
		Sol1 *string `json:"sol1"`
		Sol2 *string `json:"sol2"`
	}) error {
		if d.Goal == nil || d.Sol1 == nil || d.Sol2 == nil {
			return errors.New("missing field goal, sol1 or sol2")
		}
		if len(docs) >= len(labels) {
			return fmt.Errorf("more items than %s has labels (%d)", lpath, len(labels))
		}
		docs = append(docs, piqaDoc{Goal: *d.Goal, Sol1: *d.Sol1, Sol2: *d.Sol2, Label: labels[len(docs)], Source: src(path, line)})
		return nil
	})
	if err == nil && len(docs) != len(labels) {
		err = fmt.Errorf("%s has %d items but %s has %d labels", path, len(docs), lpath, len(labels))
	}
	return docs, err
}

func loadPIQAFoundry(root string) ([]piqaDoc, error) {
	var docs []piqaDoc
	_, err := loadFoundry(root, "piqa", []string{"query", "choices", "gold"}, func(f foundry) (Item, error) {
		if err := checkGold(*f.Gold, len(f.Choices)); err != nil {
			return Item{}, err
		}
		if len(f.Choices) != 2 {
			return Item{}, fmt.Errorf("%d choices; PIQA has 2", len(f.Choices))
		}
		goal := strings.TrimSuffix(strings.TrimPrefix(*f.Query, "Question: "), "\n")
		docs = append(docs, piqaDoc{Goal: goal, Sol1: f.Choices[0], Sol2: f.Choices[1], Label: *f.Gold})
		return Item{}, nil
	})
	return docs, err
}

// ---- HellaSwag: the original jsonl (ctx_a, ctx_b, activity_label, endings, label), else the
// six-line text (activity_label: ctx, label, four endings), optionally .bz2.

type hellaDoc struct {
	Query   string // activity_label + ": " + ctx, before preprocessing
	Endings []string
	Label   int
	Source  string
}

func loadHellaSwag(root string) ([]hellaDoc, error) {
	if f, path, err := open(root, "hellaswag/hellaswag_val.jsonl", "hellaswag/hellaswag_val.jsonl.bz2"); err == nil {
		defer f.Close()
		var docs []hellaDoc
		err := jsonLines(f, path, func(line int, d struct {
			ActivityLabel *string  `json:"activity_label"`
			CtxA          *string  `json:"ctx_a"`
			CtxB          *string  `json:"ctx_b"`
			Endings       []string `json:"endings"`
			Label         *int     `json:"label"`
		}) error {
			if d.ActivityLabel == nil || d.CtxA == nil || d.CtxB == nil || d.Endings == nil || d.Label == nil {
				return errors.New("missing field activity_label, ctx_a, ctx_b, endings or label")
			}
			if err := checkGold(*d.Label, len(d.Endings)); err != nil {
				return err
			}
			ctx := *d.CtxA + " " + capitalize(*d.CtxB)
			docs = append(docs, hellaDoc{Query: *d.ActivityLabel + ": " + ctx, Endings: d.Endings, Label: *d.Label, Source: src(path, line)})
			return nil
		})
		return docs, err
	}
	f, path, err := open(root, "hellaswag/hellaswag_val_full.txt", "hellaswag/hellaswag_val_full.txt.bz2")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 || len(lines)%6 != 0 {
		return nil, fmt.Errorf("%s: %d lines is not a whole number of 6-line items (context, label, 4 endings)", path, len(lines))
	}
	var docs []hellaDoc
	for i := 0; i < len(lines); i += 6 {
		label, err := strconv.Atoi(strings.TrimSpace(lines[i+1]))
		if err != nil || label < 0 || label > 3 {
			return nil, fmt.Errorf("%s:%d: label %q is not 0–3", path, i+2, lines[i+1])
		}
		docs = append(docs, hellaDoc{Query: lines[i], Endings: append([]string(nil), lines[i+2:i+6]...), Label: label, Source: src(path, i+1)})
	}
	return docs, nil
}

// capitalize is Python's str.capitalize: the first character upper-cased, the rest lower.
func capitalize(s string) string {
	if s == "" {
		return s
	}
	r := []rune(s)
	return strings.ToUpper(string(r[0])) + strings.ToLower(string(r[1:]))
}

// ---- MMLU: <root>/mmlu/{dev,val,test}/<subject>_<split>.csv (question, A, B, C, D, answer).

type mmluDoc struct {
	Subject  string
	Question string
	Choices  [4]string
	Answer   int
	Source   string
}

func loadMMLUSplit(root, split string) (map[string][]mmluDoc, error) {
	dir := filepath.Join(root, "mmlu", split)
	if _, err := os.Stat(dir); err != nil {
		alt := filepath.Join(root, "mmlu", "data", split)
		if _, err2 := os.Stat(alt); err2 != nil {
			return nil, fmt.Errorf("MMLU's %s split is not in %s (the release's %s/ folder of <subject>_%s.csv files): %v", split, filepath.Join(root, "mmlu"), split, split, err)
		}
		dir = alt
	}
	files, err := filepath.Glob(filepath.Join(dir, "*_"+split+".csv"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("%s has no <subject>_%s.csv files", dir, split)
	}
	sort.Strings(files)
	out := map[string][]mmluDoc{}
	for _, p := range files {
		subject := strings.TrimSuffix(filepath.Base(p), "_"+split+".csv")
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		r := csv.NewReader(f)
		r.FieldsPerRecord = -1
		for {
			rec, err := r.Read()
			if err == io.EOF {
				break
			}
			line, _ := r.FieldPos(0)
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			if len(rec) != 6 {
				f.Close()
				return nil, fmt.Errorf("%s:%d: %d fields; MMLU rows are question, A, B, C, D, answer", p, line, len(rec))
			}
			ans := strings.Index("ABCD", strings.TrimSpace(rec[5]))
			if ans < 0 || len(strings.TrimSpace(rec[5])) != 1 {
				f.Close()
				return nil, fmt.Errorf("%s:%d: answer %q is not A, B, C or D", p, line, rec[5])
			}
			out[subject] = append(out[subject], mmluDoc{Subject: subject, Question: rec[0], Choices: [4]string{rec[1], rec[2], rec[3], rec[4]},
				Answer: ans, Source: src(p, line)})
		}
		f.Close()
	}
	return out, nil
}
