package retrofit

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakePrefiller hands out sequence ids in order and can fail on its n-th call.
type fakePrefiller struct {
	calls, failAt, next int
	sizes               []int
	released            []int
}

func (f *fakePrefiller) Prefill(prompts [][]int, _ bool) ([]int, []int, [][]float32, error) {
	f.calls++
	if f.calls == f.failAt {
		return nil, nil, nil, errors.New("pool exhausted")
	}
	f.sizes = append(f.sizes, len(prompts))
	var ids, next []int
	for _, p := range prompts {
		f.next++
		ids, next = append(ids, f.next), append(next, p[len(p)-1])
	}
	return ids, next, nil, nil
}

func (f *fakePrefiller) Release(ids ...int) error {
	f.released = append(f.released, ids...)
	return nil
}

func TestPrefillReporting(t *testing.T) {
	prompt := func(n, tok int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = tok
		}
		return p
	}
	small := [][]int{prompt(5, 1), prompt(7, 2), prompt(3, 3)}
	big := make([][]int, 25)
	for i := range big {
		big[i] = prompt(prefillProgressTokens/20, i) // 25 × total/20: above the threshold
	}
	tests := []struct {
		name       string
		prompts    [][]int
		failAt     int
		wantCalls  int
		wantLines  int
		wantErr    bool
		wantFreed  int
		wantPieces []int
	}{
		{name: "small: one call, quiet", prompts: small, wantCalls: 1, wantPieces: []int{3}},
		{name: "large: ten pieces with progress", prompts: big, wantCalls: 10, wantLines: 10,
			wantPieces: []int{2, 3, 2, 3, 2, 3, 2, 3, 2, 3}},
		{name: "a failing piece releases the earlier ones", prompts: big, failAt: 4, wantCalls: 4, wantLines: 3,
			wantErr: true, wantFreed: 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakePrefiller{failAt: tc.failAt}
			var out strings.Builder
			ids, next, err := prefillReporting(f, tc.prompts, &out)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if f.calls != tc.wantCalls || len(f.released) != tc.wantFreed {
				t.Fatalf("%d calls, %d released; want %d and %d", f.calls, len(f.released), tc.wantCalls, tc.wantFreed)
			}
			if lines := strings.Count(out.String(), "\n"); lines != tc.wantLines {
				t.Fatalf("%d progress lines, want %d:\n%s", lines, tc.wantLines, out.String())
			}
			if tc.wantErr {
				return
			}
			if len(ids) != len(tc.prompts) || len(next) != len(tc.prompts) {
				t.Fatalf("%d ids and %d next tokens for %d prompts", len(ids), len(next), len(tc.prompts))
			}
			for i := range ids {
				if ids[i] != i+1 || next[i] != tc.prompts[i][len(tc.prompts[i])-1] {
					t.Fatalf("sequence %d: id %d next %d, out of order", i, ids[i], next[i])
				}
			}
			if !slices.Equal(f.sizes, tc.wantPieces) {
				t.Fatalf("pieces %v, want %v", f.sizes, tc.wantPieces)
			}
			if tc.wantLines > 0 && !strings.Contains(out.String(), "prefill 25/25 sequences") {
				t.Fatalf("last progress line missing:\n%s", out.String())
			}
		})
	}
}
