package tasks

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"unicode/utf8"
)

// Request is one continuation to score: log p(Continuation | Context). Continuation is the
// target delimiter plus the choice; Chars is the choice's length in characters (Python's
// len, without the delimiter), which acc_norm divides by.
type Request struct {
	Context, Continuation string
	Chars                 int
}

// choice is the request of one choice after lm-eval's default target delimiter " ".
func choice(ctx, c string) Request {
	return Request{Context: ctx, Continuation: " " + c, Chars: utf8.RuneCountInString(c)}
}

// Item is one benchmark question: one request per choice and the index of the right one. For a
// log-likelihood task (LAMBADA) there is one request and Gold is 0.
type Item struct {
	Requests []Request
	Gold     int
	// Source names the file and line the item came from (error messages, --log-samples).
	Source string
}

// Kind is how a task is scored.
type Kind int

const (
	MultipleChoice Kind = iota // acc (and acc_norm when Norm)
	LogLikelihood              // acc (greedy) and perplexity of the single continuation
)

// Task is one benchmark.
type Task struct {
	Name    string
	Version string // lm-eval's task version, reported in results.versions
	Kind    Kind
	Norm    bool // report acc_norm
	// Load reads the evaluation items and the few-shot pool from a data folder laid out as
	// ../shared/assets (see Files).
	Load func(root string) (items, shots []Item, err error)
	// Files says which files under the data folder the task reads (for --help and errors).
	Files string
	// FewShot builds an item's context with k examples from the few-shot pool (lm-eval's
	// description, the shots joined by the fewshot delimiter, then the item's own context); it
	// is applied at k = 0 too. Nil: k random pool items other than the item itself, each as
	// context + gold continuation, "\n\n" after each (lm-eval's default sampler).
	FewShot func(pool []Item, it Item, k int, rng *rand.Rand) Item
	// MaxShots, when set, is how many examples the pool offers an item (MMLU: its subject's).
	MaxShots func(pool []Item, it Item) int
}

var registry = map[string]*Task{}

func register(t *Task) { registry[t.Name] = t }

// Names lists the tasks in alphabetical order.
func Names() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup returns a task by name, or an error listing the known ones.
func Lookup(name string) (*Task, error) {
	if t, ok := registry[strings.TrimSpace(name)]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("unknown task %q: known tasks are %s", name, strings.Join(Names(), ", "))
}
