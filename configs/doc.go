// Package configs embeds the YAML model presets and retrofit recipes shipped in the binary.
//
// Model presets live in models/NAME.yaml and retrofit recipes in recipes/NAME.yaml. Callers
// parse them with the loaders in the model and trainer packages; this package only owns the
// files, so that every default is visible as data rather than hidden in code.
package configs
