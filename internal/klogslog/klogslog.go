// Package klogslog routes klog, the logger Trillian writes through, into log/slog, so that
// the process has one log stream with one format. It is the only place allowed to import
// klog (internal/archtest).
package klogslog

import (
	"context"
	"log/slog"

	"k8s.io/klog/v2"
)

// Route sends everything klog logs to l. Trillian logs routine progress (elections,
// "processed N items") at info level several times a second; those records are demoted to
// debug, so only its warnings and errors reach an info-level log.
func Route(l *slog.Logger) {
	klog.SetSlogLogger(slog.New(demote{l.Handler()}).With(slog.String("component", "trillian")))
}

type demote struct{ slog.Handler }

func (d demote) Enabled(ctx context.Context, lv slog.Level) bool {
	return d.Handler.Enabled(ctx, level(lv))
}

func (d demote) Handle(ctx context.Context, r slog.Record) error {
	r2 := slog.NewRecord(r.Time, level(r.Level), r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
	return d.Handler.Handle(ctx, r2)
}

func (d demote) WithAttrs(as []slog.Attr) slog.Handler { return demote{d.Handler.WithAttrs(as)} }
func (d demote) WithGroup(n string) slog.Handler      { return demote{d.Handler.WithGroup(n)} }

func level(l slog.Level) slog.Level {
	if l < slog.LevelWarn {
		return slog.LevelDebug
	}
	return l
}
