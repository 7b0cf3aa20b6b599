package cpuacct

import (
	"context"
	"crypto/sha256"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/internal/testdb"
)

// Verifies: REQ-FND-011
func TestParseProcStat(t *testing.T) {
	// A command name with spaces and parentheses, as a process may choose for itself.
	line := []byte("4242 (post gres) (x)) S 1 4242 4242 0 -1 4194560 321 0 0 0 150 25 0 0 20 0 1 0 100 0 0\n")
	comm, got, ok := parseProcStat(line)
	if !ok || got != 1750*time.Millisecond || comm != "post gres) (x)" {
		t.Fatalf("parseProcStat = %q, %v, %v; want \"post gres) (x)\", 1.75s (175 ticks), true", comm, got, ok)
	}
	for _, bad := range []string{"", "4242 postgres S 1", "4242 (p) S 1 2 3", "4242 (p) S 1 4242 4242 0 -1 4194560 321 0 0 0 x 25 0", "4242 )p( S 1 4242 4242 0 -1 4194560 321 0 0 0 1 25 0"} {
		if _, _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("parseProcStat(%q) accepted a malformed line", bad)
		}
	}
}

func burn(d time.Duration) {
	h := sha256.Sum256(nil)
	for start := time.Now(); time.Since(start) < d; {
		h = sha256.Sum256(h[:])
	}
}

// Verifies: REQ-FND-011
// The accounting reads the real /proc and the real PostgreSQL: CPU burnt by this process and
// by a backend of the database shows up in the right column, and the ceiling follows.
func TestTakeSeesRealWork(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc accounting is Linux-only")
	}
	pool := testdb.New(t)
	ctx := context.Background()
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	self := strings.TrimSpace(string(comm))
	a := Take(ctx, pool, self)
	if a.PGErr != nil {
		t.Fatalf("PostgreSQL processes not found: %v", a.PGErr)
	}
	burn(300 * time.Millisecond)
	// About 300 ms of CPU in a backend of this database.
	if _, err := pool.Exec(ctx, `SELECT count(*) FROM generate_series(1, 3000000) g WHERE md5(g::text) LIKE 'ab%'`); err != nil {
		t.Fatal(err)
	}
	r := Between(a, Take(ctx, pool, self))
	// Scheduling on a shared machine may take some of the work's time away; a tenth must remain.
	if r.Self < 30*time.Millisecond {
		t.Errorf("own CPU rose by %v after 300 ms of hashing", r.Self)
	}
	if !r.PGOK || r.PG < 30*time.Millisecond {
		t.Errorf("PostgreSQL CPU %v (ok %v) after a CPU-heavy query", r.PG, r.PGOK)
	}
	if r.Named[self] < 30*time.Millisecond {
		t.Errorf("CPU of processes named %q: %v", self, r.Named[self])
	}
	if !r.MachineOK || r.Machine < r.Self {
		t.Errorf("machine busy %v (ok %v) below this process's %v", r.Machine, r.MachineOK, r.Self)
	}
	if c := r.Ceiling(1000, 2); c <= 0 || c > 2*1000/(r.Self+r.PG).Seconds()+1 {
		t.Errorf("ceiling %v for 1000 units of %v CPU on 2 cores", c, r.Self+r.PG+r.Named[self])
	}
	var out strings.Builder
	r.Write(&out, 1000, 2, "upload")
	if !strings.Contains(out.String(), "CPU per upload: this process") || !strings.Contains(out.String(), "CPU-bound ceiling on 2 cores") {
		t.Errorf("report:\n%s", out.String())
	}
}
