package klogslog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// klog output (Trillian's) goes through slog: info demoted below the default level, errors kept.
// Verifies: REQ-FND-007
func TestRouteDemotesInfoAndKeepsErrors(t *testing.T) {
	var buf bytes.Buffer
	Route(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	klog.Info("processed 2 items")
	klog.Error("no longer the master")
	klog.Error("7: context canceled")
	klog.Error("ExecutePass failed: storage unavailable")
	klog.Flush()
	out := buf.String()
	if strings.Contains(out, "processed 2 items") {
		t.Errorf("klog info reached an info-level slog log: %q", out)
	}
	if !strings.Contains(out, "level=WARN msg=\"no longer the master\"") {
		t.Errorf("lost mastership not logged as a warning: %q", out)
	}
	if strings.Contains(out, "context canceled") {
		t.Errorf("shutdown cancellation reached an info-level log: %q", out)
	}
	if !strings.Contains(out, "level=ERROR msg=\"ExecutePass failed: storage unavailable\"") || !strings.Contains(out, "component=trillian") {
		t.Errorf("klog error missing from slog output (or untagged): %q", out)
	}
}
