// Command banger is the CLI: parse, call the daemon, render.
package main

import (
	"os"

	"github.com/banger-dev/banger/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
