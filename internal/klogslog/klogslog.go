// Package klogslog routes klog, the logger Trillian writes through, into log/slog, so that
// the process has one log stream with one format. It is the only place allowed to import
// klog (internal/archtest).
package klogslog

import (
	"context"
	"log/slog"
	"strings"

	"k8s.io/klog/v2"
)

// Route sends everything klog logs to l. Trillian logs routine progress (elections,
// "processed N items") at info level several times a second; those records are demoted to
// debug, so only its warnings and errors reach an info-level log. Its errors on an orderly
// shutdown ("context canceled", and losing mastership as the sequencer stops) are demoted
// too: to debug and to warn respectively.
func Route(l *slog.Logger) {
	klog.SetSlogLogger(slog.New(demote{l.Handler()}).With(slog.String("component", "trillian")))
}

type demote struct{ slog.Handler }

func (d demote) Enabled(ctx context.Context, lv slog.Level) bool {
	return d.Handler.Enabled(ctx, level(lv)) || lv >= slog.LevelError
}

func (d demote) Handle(ctx context.Context, r slog.Record) error {
	lv := level(r.Level)
	switch {
	case strings.Contains(r.Message, "context canceled"):
		lv = slog.LevelDebug
	case strings.Contains(r.Message, "no longer the master") && lv > slog.LevelWarn:
		lv = slog.LevelWarn
	}
	if !d.Handler.Enabled(ctx, lv) {
		return nil
	}
	r2 := slog.NewRecord(r.Time, lv, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
	return d.Handler.Handle(ctx, r2)
}

func (d demote) WithAttrs(as []slog.Attr) slog.Handler { return demote{d.Handler.WithAttrs(as)} }
func (d demote) WithGroup(n string) slog.Handler       { return demote{d.Handler.WithGroup(n)} }

func level(l slog.Level) slog.Level {
	if l < slog.LevelWarn {
		return slog.LevelDebug
	}
	return l
}
