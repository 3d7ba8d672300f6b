// Package layers holds the repository's architecture tests: the floors packages sit on, the
// rule that no import runs from a lower floor to a higher one, and where cgo may appear.
package layers
