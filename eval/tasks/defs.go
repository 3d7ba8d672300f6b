package tasks

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
)

// The task definitions. Each builds lm-eval's requests: the context is doc_to_text, the
// continuation target_delimiter (" ") + the choice, unless noted (testdata/lm_eval_templates.md
// quotes the sources).

func init() {
	register(&Task{Name: "piqa", Version: "1.0", Norm: true, Files: "piqa/valid.jsonl + piqa/valid-labels.lst (original), else eval-llmfoundry/piqa.jsonl",
		Load: func(root string) ([]Item, []Item, error) {
			docs, err := loadPIQA(root)
			if err != nil {
				return nil, nil, err
			}
			items := make([]Item, len(docs))
			for i, d := range docs {
				ctx := "Question: " + d.Goal + "\nAnswer:"
				items[i] = Item{Requests: []Request{choice(ctx, d.Sol1), choice(ctx, d.Sol2)}, Gold: d.Label, Source: d.Source}
			}
			return items, items, nil
		}})
	register(&Task{Name: "hellaswag", Version: "1.0", Norm: true,
		Files: "hellaswag/hellaswag_val.jsonl (original), else hellaswag/hellaswag_val_full.txt[.bz2] (6 lines per item)",
		Load: func(root string) ([]Item, []Item, error) {
			docs, err := loadHellaSwag(root)
			if err != nil {
				return nil, nil, err
			}
			items := make([]Item, len(docs))
			for i, d := range docs {
				ctx := hellaswagPreprocess(d.Query)
				it := Item{Gold: d.Label, Source: d.Source}
				for _, e := range d.Endings {
					it.Requests = append(it.Requests, choice(ctx, hellaswagPreprocess(e)))
				}
				items[i] = it
			}
			return items, items, nil
		}})
	for _, arc := range []string{"arc_easy", "arc_challenge"} {
		register(&Task{Name: arc, Version: "1.0", Norm: true, Files: "eval-llmfoundry/" + arc + ".jsonl",
			Load: foundryChoices(arc, func(q string) string { return ensurePrefix(q, "Question: ") + "\nAnswer:" })})
	}
	register(&Task{Name: "openbookqa", Version: "1.0", Norm: true, Files: "eval-llmfoundry/openbook_qa.jsonl",
		Load: foundryChoices("openbook_qa", func(q string) string { return q })})
	register(&Task{Name: "boolq", Version: "2.0", Files: "eval-llmfoundry/boolq.jsonl",
		Load: foundryChoices("boolq", func(q string) string { return strings.TrimPrefix(q, "Passage: ") + "\nAnswer:" })})
	// COPA: lm-eval's utils.doc_to_choice already puts a space before each (first letter
	// lower-cased) choice and the default target delimiter adds another: two spaces.
	register(&Task{Name: "copa", Version: "1.0", Files: "eval-llmfoundry/copa.jsonl",
		Load: foundryChoicesWith("copa", func(q string) string { return q }, func(ctx, c string) Request {
			return choice(ctx, " "+lowerFirst(c)) // lm-eval's choice is " the …", so acc_norm counts that space
		})})
	register(&Task{Name: "siqa", Version: "0.0",
		Files: "eval-llmfoundry/siqa.jsonl (its converted query is parsed back into lm-eval's \"Q: {context} {question}\\nA:\" with the answer texts; that file keeps 2 of the 3 answers)",
		Load:  loadSIQA})
	register(&Task{Name: "winogrande", Version: "1.0", Files: "eval-llmfoundry/winogrande.jsonl (partial scoring: one context per option)",
		Load: func(root string) ([]Item, []Item, error) {
			items, err := loadFoundry(root, "winogrande", []string{"context_options", "continuation", "gold"}, func(f foundry) (Item, error) {
				if err := checkGold(*f.Gold, len(f.ContextOptions)); err != nil {
					return Item{}, err
				}
				it := Item{Gold: *f.Gold}
				for _, c := range f.ContextOptions {
					it.Requests = append(it.Requests, choice(c, strings.TrimSpace(*f.Continuation)))
				}
				return it, nil
			})
			return items, items, err
		}})
	register(&Task{Name: "lambada_openai", Version: "1.0", Kind: LogLikelihood, Files: "eval-llmfoundry/lambada_openai.jsonl",
		Load: func(root string) ([]Item, []Item, error) {
			items, err := loadFoundry(root, "lambada_openai", []string{"context", "continuation"}, func(f foundry) (Item, error) {
				if strings.TrimSpace(*f.Continuation) == "" {
					return Item{}, fmt.Errorf("empty continuation")
				}
				// lambada's target template carries the space itself; no delimiter is added.
				return Item{Requests: []Request{{Context: strings.TrimRight(*f.Context, " "), Continuation: " " + strings.TrimSpace(*f.Continuation)}}}, nil
			})
			return items, items, err
		}})
	register(&Task{Name: "mmlu", Version: "1.0", Files: "mmlu/test/*_test.csv for the items (mmlu/val when there is no test; mmlu/dev alone with --limit for format checks), mmlu/dev/*_dev.csv for the shots",
		Load: loadMMLU, FewShot: mmluFewShot, MaxShots: func(pool []Item, it Item) int {
			subject, _, _ := strings.Cut(it.Source, "|")
			n := 0
			for _, sh := range pool {
				if s, _, _ := strings.Cut(sh.Source, "|"); s == subject {
					n++
				}
			}
			return n
		}})
}

// foundryChoices is a multiple-choice task from an llm-foundry jsonl (query, choices, gold).
func foundryChoices(file string, text func(query string) string) func(root string) ([]Item, []Item, error) {
	return foundryChoicesWith(file, text, choice)
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	r := []rune(s)
	return strings.ToLower(string(r[0])) + string(r[1:])
}

// foundryChoicesWith is foundryChoices with the continuation built by cont.
func foundryChoicesWith(file string, text func(query string) string, cont func(ctx, choice string) Request) func(root string) ([]Item, []Item, error) {
	return func(root string) ([]Item, []Item, error) {
		items, err := loadFoundry(root, file, []string{"query", "choices", "gold"}, func(f foundry) (Item, error) {
			if err := checkGold(*f.Gold, len(f.Choices)); err != nil {
				return Item{}, err
			}
			ctx := text(*f.Query)
			it := Item{Gold: *f.Gold}
			for _, c := range f.Choices {
				it.Requests = append(it.Requests, cont(ctx, c))
			}
			return it, nil
		})
		return items, items, err
	}
}

// loadSIQA parses the llm-foundry query ("Context: …\nQuestion: …\nChoices:\nA. …\nB. …\nAnswer:")
// back into lm-eval's social_iqa prompt and answer texts.
func loadSIQA(root string) ([]Item, []Item, error) {
	items, err := loadFoundry(root, "siqa", []string{"query", "choices", "gold"}, func(f foundry) (Item, error) {
		lines := strings.Split(*f.Query, "\n")
		if len(lines) < 5 || !strings.HasPrefix(lines[0], "Context: ") || !strings.HasPrefix(lines[1], "Question: ") || lines[2] != "Choices:" ||
			lines[len(lines)-1] != "Answer:" {
			return Item{}, fmt.Errorf("query is not \"Context: …\\nQuestion: …\\nChoices:\\nA. …\\nAnswer:\"")
		}
		answers := lines[3 : len(lines)-1]
		if err := checkGold(*f.Gold, len(answers)); err != nil {
			return Item{}, err
		}
		ctx := "Q: " + strings.TrimPrefix(lines[0], "Context: ") + " " + strings.TrimPrefix(lines[1], "Question: ") + "\nA:"
		it := Item{Gold: *f.Gold}
		for k, a := range answers {
			prefix := string(rune('A'+k)) + ". "
			if !strings.HasPrefix(a, prefix) {
				return Item{}, fmt.Errorf("answer line %q does not start with %q", a, prefix)
			}
			it.Requests = append(it.Requests, choice(ctx, strings.TrimPrefix(a, prefix)))
		}
		return it, nil
	})
	return items, items, err
}

func ensurePrefix(s, p string) string {
	if strings.HasPrefix(s, p) {
		return s
	}
	return p + s
}

var bracketed = regexp.MustCompile(`\[.*?\]`)

// hellaswagPreprocess is lm-eval's hellaswag utils.preprocess.
func hellaswagPreprocess(text string) string {
	text = strings.TrimSpace(text)
	text = strings.ReplaceAll(text, " [title]", ". ")
	text = bracketed.ReplaceAllString(text, "")
	return strings.ReplaceAll(text, "  ", " ")
}

// ---- MMLU: the standard prompt and 5 dev-split shots per subject.

func mmluQuestion(d mmluDoc) string {
	return fmt.Sprintf("%s\nA. %s\nB. %s\nC. %s\nD. %s\nAnswer:", strings.TrimSpace(d.Question), d.Choices[0], d.Choices[1], d.Choices[2], d.Choices[3])
}

// mmluSubject is the subject's name in the description ("high_school_physics" → "high school physics").
func mmluSubject(s string) string { return strings.ReplaceAll(s, "_", " ") }

func loadMMLU(root string) ([]Item, []Item, error) {
	var docs map[string][]mmluDoc
	var err error
	for _, split := range []string{"test", "val", "dev"} {
		if docs, err = loadMMLUSplit(root, split); err == nil {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	dev, _ := loadMMLUSplit(root, "dev")
	var items, shots []Item
	for _, subject := range sortedKeys(docs) {
		for _, d := range docs[subject] {
			items = append(items, mmluItem(d))
		}
		for _, d := range dev[subject] {
			shots = append(shots, mmluItem(d))
		}
	}
	return items, shots, nil
}

func mmluItem(d mmluDoc) Item {
	it := Item{Gold: d.Answer, Source: d.Subject + "|" + d.Source}
	for _, l := range []string{"A", "B", "C", "D"} {
		it.Requests = append(it.Requests, choice(mmluQuestion(d), l))
	}
	return it
}

// mmluFewShot builds lm-eval's MMLU context: the subject's description, then the first k
// dev questions of the same subject with their answers (its first_n sampler), then the item;
// the description is there at 0 shots too.
func mmluFewShot(pool []Item, it Item, k int, _ *rand.Rand) Item {
	subject, _, _ := strings.Cut(it.Source, "|")
	var b strings.Builder
	fmt.Fprintf(&b, "The following are multiple choice questions (with answers) about %s.\n\n", mmluSubject(subject))
	n := 0
	for _, sh := range pool {
		if n == k {
			break
		}
		if s, _, _ := strings.Cut(sh.Source, "|"); s != subject {
			continue
		}
		r := sh.Requests[sh.Gold]
		b.WriteString(r.Context + r.Continuation + "\n\n")
		n++
	}
	out := it
	out.Requests = make([]Request, len(it.Requests))
	for i, r := range it.Requests {
		out.Requests[i] = Request{Context: b.String() + r.Context, Continuation: r.Continuation, Chars: r.Chars}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
