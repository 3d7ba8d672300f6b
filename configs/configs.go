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
