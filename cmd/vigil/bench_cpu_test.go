package main

import (
	"crypto/sha256"
	"os"
	"runtime"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and parentheses, as a process may choose for itself.
	line := []byte("4242 (post gres) (x)) S 1 4242 4242 0 -1 4194560 321 0 0 0 150 25 0 0 20 0 1 0 100 0 0\n")
	got, ok := parseProcStat(line)
	if !ok || got != 1750*time.Millisecond {
		t.Fatalf("parseProcStat = %v, %v; want 1.75s (175 ticks), true", got, ok)
	}
	for _, bad := range []string{"", "4242 postgres S 1", "4242 (p) S 1 2 3", "4242 (p) S 1 4242 4242 0 -1 4194560 321 0 0 0 x 25 0"} {
		if _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("parseProcStat(%q) accepted a malformed line", bad)
		}
	}
}

// The accounting reads this process's own CPU from the real /proc: burning CPU shows up.
func TestProcCPUSeesOwnWork(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc accounting is Linux-only")
	}
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	busy0 := machineBusy()
	h := sha256.Sum256(nil)
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
		h = sha256.Sum256(h[:])
	}
	after, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Scheduling on a shared machine may take some of the 300 ms away; a tenth must remain.
	if after-before < 30*time.Millisecond {
		t.Fatalf("own CPU rose by %v after 300 ms of hashing", after-before)
	}
	if busy1 := machineBusy(); busy0 == 0 || busy1-busy0 < 30*time.Millisecond {
		t.Fatalf("machine busy time %v → %v after 300 ms of hashing", busy0, busy1)
	}
}
