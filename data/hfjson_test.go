package data

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenHFJSONRefusals: names in a save_to_disk folder's JSON that point back at the
// folder (an endless recursion found by FuzzHFStateJSON) or out of it are refused.
func TestOpenHFJSONRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, file, content, want string
	}{
		{"empty split", "dataset_dict.json", `{"splits": [""]}`, `split name "" is not a directory name`},
		{"dot split", "dataset_dict.json", `{"splits": ["."]}`, `split name "." is not a directory name`},
		{"parent split", "dataset_dict.json", `{"splits": ["train", ".."]}`, `split name ".." is not a directory name`},
		{"path split", "dataset_dict.json", `{"splits": ["a/b"]}`, `split name "a/b" is not a directory name`},
		{"data file outside", "state.json", `{"_data_files": [{"filename": "../../x.arrow"}]}`, `names the data file "../../x.arrow", which is not inside the folder`},
		{"absolute data file", "state.json", `{"_data_files": [{"filename": "/etc/passwd"}]}`, "not inside the folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, tc.file), tc.content)
			for _, opts := range []OpenOptions{{}, {Split: "train"}} {
				if _, err := OpenWith(dir, opts); err == nil || !strings.Contains(err.Error(), tc.want) && !strings.Contains(err.Error(), "drop the split") {
					t.Fatalf("split %q: got %v, want %q", opts.Split, err, tc.want)
				}
			}
		})
	}
}
