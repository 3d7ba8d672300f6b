package synth

import (
	"bytes"
	"strings"
	"testing"
)

func TestWriteIsDeterministicAndSeparated(t *testing.T) {
	var a, b, c bytes.Buffer
	if err := Write(&a, 20000, 1); err != nil {
		t.Fatal(err)
	}
	_ = Write(&b, 20000, 1)
	_ = Write(&c, 20000, 2)
	if a.String() != b.String() {
		t.Fatal("same seed, different corpus")
	}
	if a.String() == c.String() {
		t.Fatal("different seeds, same corpus")
	}
	if a.Len() < 20000 {
		t.Fatalf("wrote %d bytes, want ≥ 20000", a.Len())
	}
	stories := strings.Split(a.String(), Separator)
	if len(stories) < 20 {
		t.Fatalf("only %d stories", len(stories))
	}
	for _, s := range stories[:len(stories)-1] {
		if !strings.Contains(s, "Once upon a time") {
			t.Fatalf("story without an opening: %q", s)
		}
	}
}
