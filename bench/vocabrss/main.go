// Command vocabrss runs one merge config through arrowio/stream, the
// engine of `npsfuse merge`, without Python: bench_vocab_memory.py
// measures its peak RSS, built from this tree and from an earlier commit.
//
// Usage: vocabrss CONFIG.yml OUT_DIR
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/npsfuse/npsfuse/arrowio/stream"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: vocabrss CONFIG.yml OUT_DIR")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg, err := stream.ParseConfig(raw, filepath.Dir(os.Args[1]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := stream.Run(context.Background(), cfg, stream.Options{OutDir: os.Args[2], Force: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
