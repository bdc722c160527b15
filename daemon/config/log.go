package config

import (
	"io"
	"log/slog"
)

// NewLogger returns the structured logger the configuration asks for
// (log_format json or text, log_level), writing to w, and makes it the
// default slog logger.
func NewLogger(c *Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	switch c.LogLevel {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if c.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	l := slog.New(h).With("service", "npsfused")
	slog.SetDefault(l)
	return l
}
