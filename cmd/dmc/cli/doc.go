// Package cli holds the dmc cobra commands. Each command lives in its own file as an Options
// struct plus a RunE that only parses flags and wires packages together; commands register
// themselves with register() so that files can be added without touching this one.
package cli
