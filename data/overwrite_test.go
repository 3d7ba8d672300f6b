package data

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// snapshot maps every file under dir (relative, slash-separated) to its content.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// siblings lists the entries of dir's parent other than dir (temporary directories left
// behind would show up here).
func siblings(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != filepath.Base(dir) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

func TestPrepareOverwriteKeepsData(t *testing.T) {
	dir := t.TempDir()
	var docs []string
	for i := range 300 {
		docs = append(docs, strings.Repeat("old story ", i%5+1))
	}
	oldIn := writeFile(t, filepath.Join(dir, "old.txt"), strings.Join(docs, DefaultSeparator))
	newIn := writeFile(t, filepath.Join(dir, "new.txt"), "brand<|endoftext|>new")
	big := writeFile(t, filepath.Join(dir, "big.txt"), strings.Repeat("a fine document<|endoftext|>", 5000))
	badJSONL := writeFile(t, filepath.Join(dir, "bad.jsonl"), `{"text": "ok"}`+"\n"+`{"text": "ok"}`+"\n"+"not json\n")
	nulTxt := writeFile(t, filepath.Join(dir, "nul.txt"), strings.Repeat("x", 100<<10)+"\x00")
	tok := byteTokenizer{}

	// prepared makes a fresh output with several shards per split, plus user files.
	prepared := func(t *testing.T) string {
		out := filepath.Join(t.TempDir(), "shards")
		m, err := Prepare(PrepareOptions{Inputs: []string{oldIn}, Out: out, Tokenizer: tok, ShardBytes: 2 << 10, HeldoutFrac: 0.2, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Splits[SplitTrain].Shards) < 2 {
			t.Fatalf("want several shards, got %+v", m.Splits[SplitTrain])
		}
		writeFile(t, filepath.Join(out, "NOTES.md"), "my notes")
		writeFile(t, filepath.Join(out, SplitTrain, "README"), "about these shards")
		writeFile(t, filepath.Join(out, SplitTrain, "shard-00000.arrow.tmp"), "left from an old crash")
		return out
	}

	t.Run("a failing prepare leaves the old output untouched", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			inputs []string
			want   string
		}{
			{"bad JSON line after good input", []string{big, badJSONL}, "line 3 is not a JSON object"},
			{"binary deep in a text file", []string{big, nulTxt}, "nul.txt is not text: at byte offset 102400"},
			{"no documents", []string{writeFile(t, filepath.Join(dir, "blank.txt"), "  ")}, "no documents"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out := prepared(t)
				before := snapshot(t, out)
				_, err := Prepare(PrepareOptions{Inputs: tc.inputs, Out: out, Tokenizer: tok, Overwrite: true, ShardBytes: 4 << 10})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error containing %q", err, tc.want)
				}
				if after := snapshot(t, out); !reflect.DeepEqual(before, after) {
					t.Fatalf("the failed prepare changed the output:\nbefore %v\nafter  %v", keys(before), keys(after))
				}
				if s := siblings(t, out); len(s) != 0 {
					t.Errorf("left behind %v", s)
				}
				if got := readAllDocs(t, out, OpenOptions{}); len(got) == 0 {
					t.Error("old data no longer readable")
				}
			})
		}
	})

	t.Run("--force replaces only the files the old manifest lists", func(t *testing.T) {
		out := prepared(t)
		old, err := ReadManifest(out)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Prepare(PrepareOptions{Inputs: []string{newIn}, Out: out, Tokenizer: tok, Overwrite: true})
		if err != nil {
			t.Fatal(err)
		}
		after := snapshot(t, out)
		for _, f := range []string{"NOTES.md", "train/README", "train/shard-00000.arrow.tmp"} {
			if _, ok := after[f]; !ok {
				t.Errorf("--force removed the unrelated file %s", f)
			}
		}
		for _, f := range old.Files() {
			if _, ok := after[f]; ok && !contains(m.Files(), f) {
				t.Errorf("old file %s survived", f)
			}
		}
		for _, f := range m.Files() {
			if _, ok := after[f]; !ok {
				t.Errorf("new file %s missing", f)
			}
		}
		if _, err := os.Stat(filepath.Join(out, SplitHeldout)); err == nil {
			t.Error("the old heldout/ directory (now without shards) was kept")
		}
		if got, want := readAllDocs(t, out, OpenOptions{}), encodeAll(tok, []string{"brand", "new"}, false); !reflect.DeepEqual(got, want) {
			t.Fatalf("read back %v, want %v", got, want)
		}
		if s := siblings(t, out); len(s) != 0 {
			t.Errorf("left behind %v", s)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		notOurs := t.TempDir()
		writeFile(t, filepath.Join(notOurs, "thesis.tex"), "years of work")
		collide := prepared(t)
		m, _ := ReadManifest(collide)
		// Drop the heldout shards from the manifest: its heldout shard files become "unrelated".
		m.Splits[SplitHeldout] = Split{}
		if err := writeManifest(collide, m); err != nil {
			t.Fatal(err)
		}
		escape := prepared(t)
		m2, _ := ReadManifest(escape)
		tr := m2.Splits[SplitTrain]
		tr.Shards = append(tr.Shards, ShardInfo{File: "../../precious.txt"})
		m2.Splits[SplitTrain] = tr
		writeManifest(escape, m2)
		damaged := prepared(t)
		os.WriteFile(filepath.Join(damaged, ManifestName), []byte("{oops"), 0o644)
		file := writeFile(t, filepath.Join(t.TempDir(), "a-file"), "x")
		for _, tc := range []struct {
			name, out string
			force     bool
			want      string
		}{
			{"files without a manifest, no --force", notOurs, false, "holds files (thesis.tex) but no dmc manifest.json"},
			{"files without a manifest, --force", notOurs, true, "--force only replaces data dmc prepare wrote"},
			{"prepared, no --force", escape, false, "pass --force to replace it"},
			{"manifest pointing outside", escape, true, `lists "../../precious.txt", which is outside`},
			{"damaged manifest", damaged, true, "cannot tell which files"},
			{"a new shard would land on an unlisted file", collide, true, "the old manifest does not list it"},
			{"output is a file", file, true, "is a file, not a directory"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := snapshot(t, filepath.Dir(tc.out))
				_, err := Prepare(PrepareOptions{Inputs: []string{oldIn}, Out: tc.out, Tokenizer: tok, Overwrite: tc.force, HeldoutFrac: 0.2, Seed: 1})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error containing %q", err, tc.want)
				}
				if after := snapshot(t, filepath.Dir(tc.out)); !reflect.DeepEqual(before, after) {
					t.Fatalf("a refused prepare changed files:\nbefore %v\nafter  %v", keys(before), keys(after))
				}
			})
		}
	})

	t.Run("new and empty outputs", func(t *testing.T) {
		parent := t.TempDir()
		empty := filepath.Join(t.TempDir(), "empty")
		if err := os.Mkdir(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, out := range []string{filepath.Join(parent, "a", "b"), empty} {
			if _, err := Prepare(PrepareOptions{Inputs: []string{newIn}, Out: out, Tokenizer: tok}); err != nil {
				t.Fatal(err)
			}
			if got := readAllDocs(t, out, OpenOptions{}); len(got) != 2 {
				t.Fatalf("%d docs", len(got))
			}
			if s := siblings(t, out); len(s) != 0 {
				t.Errorf("left behind %v", s)
			}
		}
	})
}

func keys(m map[string]string) []string {
	var k []string
	for f := range m {
		k = append(k, f)
	}
	sort.Strings(k)
	return k
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestPrepareArrowInputs: Prepare reads Arrow files and streams, directories of them and
// Hugging Face save_to_disk folders (Dataset and DatasetDict), picking the text column by
// the default rule or TextColumn, with errors that list the choices.
func TestPrepareArrowInputs(t *testing.T) {
	dir := t.TempDir()
	texts := []string{"the first row", "second", "", "fourth row here"}
	withText := stringRecord(t, []string{"title", "text"}, [][]string{{"t0", "t1", "t2", "t3"}, texts}, true)
	defer withText.Release()
	onlyBody := stringRecord(t, []string{"body"}, [][]string{texts}, true)
	defer onlyBody.Release()
	twoStrings := stringRecord(t, []string{"question", "answer"}, [][]string{texts, texts}, false)
	defer twoStrings.Release()
	tokens := tokenRecord(t, TokenColumn, false, false, [][]int{{1, 2}})
	defer tokens.Release()
	writeArrow(t, filepath.Join(dir, "with_text.arrow"), false, withText)
	writeArrow(t, filepath.Join(dir, "body.stream"), true, onlyBody, onlyBody) // no extension hint, two batches
	writeArrow(t, filepath.Join(dir, "two.arrow"), false, twoStrings)
	writeArrow(t, filepath.Join(dir, "tokens.arrow"), false, tokens)
	// A directory walk takes .arrow files with the others.
	os.MkdirAll(filepath.Join(dir, "tree"), 0o755)
	writeArrow(t, filepath.Join(dir, "tree", "a.arrow"), true, withText)
	writeFile(t, filepath.Join(dir, "tree", "b.txt"), "from text")
	nonEmpty := []string{"the first row", "second", "fourth row here"}

	var hf string
	if _, err := os.Stat(filepath.Join(assets, "hf-arrow-examples")); err == nil {
		hf = filepath.Join(assets, "hf-arrow-examples")
	}
	cases := []struct {
		name     string
		input    string
		column   string
		want     []string
		wantErr  string
		needsHF  bool
		wantCol  string
		wantRows int
	}{
		{name: "text column by default", input: "with_text.arrow", want: nonEmpty, wantCol: "text"},
		{name: "only string column, stream by content", input: "body.stream", want: append(append([]string{}, nonEmpty...), nonEmpty...), wantCol: "body"},
		{name: "named column", input: "two.arrow", column: "answer", want: nonEmpty, wantCol: "answer"},
		{name: "walk with .arrow and .txt", input: "tree", want: append(append([]string{}, nonEmpty...), "from text")},
		{name: "ambiguous", input: "two.arrow", wantErr: `several string columns (question, answer) and none is named "text"; pick one with --text-column NAME`},
		{name: "unknown column", input: "with_text.arrow", column: "body", wantErr: `no column "body"; its columns are title (utf8), text (utf8), n (int64); pass the text column with --text-column NAME`},
		{name: "column not text", input: "with_text.arrow", column: "n", wantErr: `column "n" is int64, not a string; pass a text column with --text-column NAME (its string columns are title, text)`},
		{name: "already tokens", input: "tokens.arrow", wantErr: "already holds token ids"},
		{name: "HF Dataset, ambiguous", input: "hf:proxy_qa", needsHF: true, wantErr: "several string columns (meta_question, wiki_cover, time_sensitive, domain)"},
		{name: "HF Dataset", input: "hf:proxy_qa", column: "meta_question", needsHF: true, wantRows: 100, wantCol: "meta_question"},
		{name: "HF DatasetDict, only split", input: "hf:elyza_tasks_100_slice10", column: "input", needsHF: true, wantRows: 10},
		{name: "HF DatasetDict:split", input: "hf:elyza_tasks_100_slice10:test", column: "output", needsHF: true, wantRows: 10},
		{name: "HF DatasetDict, unknown split", input: "hf:elyza_tasks_100_slice10:train", column: "output", needsHF: true, wantErr: `no split "train"; its splits are test`},
		{name: "HF arrow file", input: "hf:raft_nested/data-00000-of-00001.arrow", column: "question", needsHF: true, wantRows: 263},
		{name: "nested column", input: "hf:raft_nested", column: "context", needsHF: true, wantErr: `column "context" is struct`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := filepath.Join(dir, tc.input)
			if rest, ok := strings.CutPrefix(tc.input, "hf:"); ok {
				if hf == "" {
					t.Skip("shared assets absent")
				}
				in = filepath.Join(hf, rest)
			}
			out := filepath.Join(t.TempDir(), "out")
			m, err := Prepare(PrepareOptions{Inputs: []string{in}, Out: out, Tokenizer: byteTokenizer{}, TextColumn: tc.column})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := readAllDocs(t, out, OpenOptions{})
			if tc.want != nil {
				if want := encodeAll(byteTokenizer{}, tc.want, false); !reflect.DeepEqual(got, want) {
					t.Fatalf("read back %v\nwant %v", got, want)
				}
			}
			if tc.wantRows > 0 && len(got) != tc.wantRows {
				t.Fatalf("%d documents, want %d", len(got), tc.wantRows)
			}
			if tc.wantCol != "" && (m.TextColumn != tc.wantCol || m.Sources[0].Column != tc.wantCol) {
				t.Errorf("manifest text column %q / source column %q, want %q", m.TextColumn, m.Sources[0].Column, tc.wantCol)
			}
			if tc.needsHF && tc.column != "" {
				// The documents are the column's rows as the reader streams them.
				want := readAllDocs(t, in, OpenOptions{TextColumn: tc.column, Tokenizer: byteTokenizer{}})
				if !reflect.DeepEqual(got, want) {
					t.Fatal("prepared documents differ from the reader's")
				}
			}
		})
	}
	t.Run("jsonl text field", func(t *testing.T) {
		jl := writeFile(t, filepath.Join(dir, "q.jsonl"), `{"question": "why", "answer": "because"}`+"\n")
		out := filepath.Join(t.TempDir(), "out")
		if _, err := Prepare(PrepareOptions{Inputs: []string{jl}, Out: out, Tokenizer: byteTokenizer{}}); err == nil ||
			!strings.Contains(err.Error(), `has no field "text"; its fields are answer, question; pass the text field with --text-field NAME`) {
			t.Fatalf("got %v", err)
		}
		m, err := Prepare(PrepareOptions{Inputs: []string{jl}, Out: out, Tokenizer: byteTokenizer{}, TextField: "answer"})
		if err != nil || m.TextField != "answer" || m.Splits[SplitTrain].Docs != 1 {
			t.Fatalf("%+v, %v", m, err)
		}
	})
}

// TestPrepareWalkSkipsPreparedOutput: an output directory inside the corpus is not read back
// as input when the corpus is prepared again with --force.
func TestPrepareWalkSkipsPreparedOutput(t *testing.T) {
	corpus := t.TempDir()
	writeFile(t, filepath.Join(corpus, "a.txt"), "one<|endoftext|>two")
	out := filepath.Join(corpus, "shards")
	for _, force := range []bool{false, true} {
		if _, err := Prepare(PrepareOptions{Inputs: []string{corpus}, Out: out, Tokenizer: byteTokenizer{}, Overwrite: force}); err != nil {
			t.Fatal(err)
		}
		if got, want := readAllDocs(t, out, OpenOptions{}), encodeAll(byteTokenizer{}, []string{"one", "two"}, false); !reflect.DeepEqual(got, want) {
			t.Fatalf("force=%v: %v, want %v", force, got, want)
		}
	}
	if _, err := Prepare(PrepareOptions{Inputs: []string{out}, Out: t.TempDir(), Tokenizer: byteTokenizer{}}); err == nil ||
		!strings.Contains(err.Error(), "already prepared data") {
		t.Fatalf("preparing prepared data: %v", err)
	}
}
