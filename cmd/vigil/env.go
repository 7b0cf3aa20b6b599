package main

import (
	"context"
	"log/slog"
	"os"
)

// The commands read their VIGIL_* variables through the command's context, not from the
// process directly, so that tests give each command its own environment (withEnv) and run in
// parallel instead of changing the process's environment with t.Setenv. Without an
// environment in the context, the process's is used (os.LookupEnv): what `vigil` does.
//
// Flag defaults taken from variables (--data-dir from VIGIL_DATA_DIR, …) are read when the
// command tree is built, from the process: tests that need another value pass the flag.

// lookupEnv is the signature of os.LookupEnv.
type lookupEnv func(name string) (string, bool)

type envKey struct{}

// withEnv returns a context whose commands see the variables of vars first and the process's
// environment for the rest (as t.Setenv would, but for this context only). A variable set to
// "" reads as unset, as it does for envOr.
func withEnv(ctx context.Context, vars map[string]string) context.Context {
	return context.WithValue(ctx, envKey{}, lookupEnv(func(name string) (string, bool) {
		if v, ok := vars[name]; ok {
			return v, true
		}
		return os.LookupEnv(name)
	}))
}

// lookupEnvCtx looks a variable up in the context's environment (withEnv), else the process's.
func lookupEnvCtx(ctx context.Context, name string) (string, bool) {
	if ctx != nil {
		if l, ok := ctx.Value(envKey{}).(lookupEnv); ok {
			return l(name)
		}
	}
	return os.LookupEnv(name)
}

// getenv is os.Getenv through the context's environment.
func getenv(ctx context.Context, name string) string {
	v, _ := lookupEnvCtx(ctx, name)
	return v
}

// envOrCtx is envOr through the context's environment: the variable, or def when it is unset
// or empty.
func envOrCtx(ctx context.Context, name, def string) string {
	if v, ok := lookupEnvCtx(ctx, name); ok && v != "" {
		return v
	}
	return def
}

type loggerKey struct{}

// withLogger returns a context whose commands log through l instead of slog's default (a
// test reads what its own commands log while others run in parallel).
func withLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// ctxLogger is the logger of the context (withLogger), else slog's default.
func ctxLogger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

type fixedLoggingKey struct{}

// withFixedLogging returns a context whose commands leave the process's loggers (slog's
// default, klog's routing to it) as they are instead of installing those of --log-level and
// --log-format: tests run commands in parallel beside embedded Trillian servers, whose klog
// calls would race with klog being re-routed. The flags are still checked.
func withFixedLogging(ctx context.Context) context.Context {
	return context.WithValue(ctx, fixedLoggingKey{}, true)
}

// fixedLogging reports whether the context asks to leave the process's loggers alone.
func fixedLogging(ctx context.Context) bool {
	fixed, _ := ctx.Value(fixedLoggingKey{}).(bool)
	return fixed
}
