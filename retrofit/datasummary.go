package retrofit

import (
	"fmt"
	"unicode/utf8"

	"github.com/dmc-project/dmc/data"
)

// DataSummary is what `dmc data inspect` reports of a dataset beyond its layout.
type DataSummary struct {
	Rows, Tokens int64
	MaxID        int32    // largest token id (-1 when none)
	First        []int32  // the first row's token ids (nil when the dataset has no token column)
	FirstRaw     []string // "column = value" of the first row when there is no token column
}

// SummarizeData streams ds once: rows, tokens, the largest id and the first row.
func SummarizeData(ds *data.Dataset) (*DataSummary, error) {
	s := &DataSummary{MaxID: -1}
	if ds.ColumnErr() == nil {
		for ids, err := range ds.Documents() {
			if err != nil {
				return nil, err
			}
			if s.Rows == 0 {
				s.First = append([]int32{}, ids...)
			}
			s.Rows++
			s.Tokens += int64(len(ids))
			for _, id := range ids {
				s.MaxID = max(s.MaxID, id)
			}
		}
		return s, nil
	}
	for rec, err := range ds.Records() {
		if err != nil {
			return nil, err
		}
		if s.Rows == 0 && rec.NumRows() > 0 {
			for i := 0; i < int(rec.NumCols()); i++ {
				s.FirstRaw = append(s.FirstRaw, fmt.Sprintf("%s = %q", rec.ColumnName(i), Clip(rec.Column(i).ValueStr(0), 200)))
			}
		}
		s.Rows += rec.NumRows()
	}
	return s, nil
}

// Clip shortens s to about n bytes at a character boundary, marking the cut with "…".
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
