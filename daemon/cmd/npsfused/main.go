// Command npsfused is the npsfuse daemon: a long-running service that
// holds model weights and runs merges, NPS pruning and compression, and
// interactive NPS searches for training loops, over Arrow Flight.
//
// Usage: npsfused [--config FILE] [flags]; npsfused --print-config shows
// the effective configuration (tokens masked). See daemon/config for the
// keys, daemon/server for the service.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/server"
)

func main() {
	fs := pflag.NewFlagSet("npsfused", pflag.ContinueOnError)
	config.Flags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if v, _ := fs.GetBool("version"); v {
		fmt.Println("npsfused", server.Version)
		return
	}
	cfg, err := config.Load(fs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "npsfused:", err)
		os.Exit(2)
	}
	if p, _ := fs.GetBool("print-config"); p {
		if err := cfg.Print(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "npsfused:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := server.Run(ctx, cfg, config.NewLogger(cfg, os.Stderr)); err != nil {
		slog.Error("npsfused failed", "error", err)
		os.Exit(1)
	}
}
