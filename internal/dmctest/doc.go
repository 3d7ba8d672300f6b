// Package dmctest holds test fixtures shared by the packages that check DMC against the
// sequential compressed cache (dmc itself, the training graph, the kernels).
package dmctest
