// Package configs embeds the YAML model presets and retrofit recipes shipped in the binary.
//
// Model presets live in models/NAME.yaml and retrofit recipes in recipes/NAME.yaml. Callers
// parse them with the loaders in the model and trainer packages; this package only owns the
// files, so that every default is visible as data rather than hidden in code.
package configs

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

//go:embed models/*.yaml recipes/*.yaml
var FS embed.FS

// Names lists the embedded files of a kind ("models" or "recipes") without extension.
func Names(kind string) []string {
	entries, err := fs.ReadDir(FS, kind)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") {
			out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
		}
	}
	sort.Strings(out)
	return out
}

// Read returns the raw YAML of an embedded preset or recipe.
func Read(kind, name string) ([]byte, error) {
	b, err := FS.ReadFile(kind + "/" + name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("unknown %s %q (known: %s)", strings.TrimSuffix(kind, "s"), name, strings.Join(Names(kind), ", "))
	}
	return b, nil
}
