// Command dmc retrofits Llama models with Dynamic Memory Compression and serves them.
package main

import (
	"os"

	"github.com/dmc-project/dmc/cmd/dmc/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
