// Package cpuacct measures the CPU time a load test spends per unit of work: in this
// process, in the PostgreSQL processes serving its database, in named helper processes (a
// broker), and on the whole machine.
//
// Throughput on a shared 2-core machine moves with whatever else runs; CPU time spent per
// upload moves much less, and says what the machine could do if the run had it to itself:
// the CPU-bound ceiling is cores ÷ (CPU per upload).
//
// It reads Linux's /proc; elsewhere, or when PostgreSQL runs on another host (its processes
// are not visible here), the figures it cannot take are reported as unavailable.
package cpuacct

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's utime and stime: 100 on every Linux
// architecture Go supports (it is part of the kernel's user ABI, independent of CONFIG_HZ).
const clockTicks = 100

// Snapshot is the CPU time used so far.
type Snapshot struct {
	At      time.Time
	Self    time.Duration                    // this process
	PG      map[int]time.Duration            // PostgreSQL processes of the pool's database and the server's background processes
	DB      map[int]time.Duration            // of those, the backends connected to the pool's database only
	PGErr   error                            // why PG is unavailable
	Named   map[string]map[int]time.Duration // processes by command name (comm), as asked
	Machine time.Duration                    // all CPUs' busy time (user+nice+system+irq+softirq+steal); 0 if unreadable
}

// Take records the CPU time used so far by this process, by the PostgreSQL backends
// connected to pool's database plus the server's background processes (WAL writer,
// checkpointer, …), by every process whose command name is one of names, and by the whole
// machine. pool may be nil.
func Take(ctx context.Context, pool *pgxpool.Pool, names ...string) Snapshot {
	s := Snapshot{At: time.Now(), PG: map[int]time.Duration{}, DB: map[int]time.Duration{}, Named: map[string]map[int]time.Duration{}}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.Self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.Machine = machineBusy()
	for _, n := range names {
		s.Named[n] = byName(n)
	}
	if pool == nil {
		s.PGErr = fmt.Errorf("no database pool")
		return s
	}
	rows, err := pool.Query(ctx, `SELECT pid, datname IS NOT NULL FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL`)
	if err != nil {
		s.PGErr = err
		return s
	}
	var pids []int
	own := map[int]bool{}
	for rows.Next() {
		var pid int
		var db bool
		if err := rows.Scan(&pid, &db); err == nil {
			pids = append(pids, pid)
			own[pid] = db
		}
	}
	rows.Close()
	for _, pid := range pids {
		if t, err := procCPU(pid); err == nil {
			s.PG[pid] = t
			if own[pid] {
				s.DB[pid] = t
			}
		}
	}
	if len(s.PG) == 0 {
		s.PGErr = fmt.Errorf("no PostgreSQL process of the database visible in /proc (server on another host?)")
	}
	return s
}

// procCPU is utime+stime of a process, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	_, t, ok := parseProcStat(b)
	if !ok {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return t, nil
}

// parseProcStat reads the command name and utime+stime from the text of /proc/<pid>/stat.
// The command name (field 2) is in parentheses and may itself contain spaces and
// parentheses: the fields after the last ')' start at field 3 (state); utime and stime are
// fields 14 and 15.
func parseProcStat(b []byte) (comm string, cpu time.Duration, ok bool) {
	open := bytes.IndexByte(b, '(')
	i := bytes.LastIndexByte(b, ')')
	if open < 0 || i < open {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return "", 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 63)
	st, err2 := strconv.ParseUint(f[12], 10, 63)
	if err1 != nil || err2 != nil {
		return "", 0, false
	}
	return string(b[open+1 : i]), time.Duration(ut+st) * time.Second / clockTicks, true
}

// byName is the CPU time of every process whose command name is name.
func byName(name string) map[int]time.Duration {
	out := map[int]time.Duration{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		if comm, t, ok := parseProcStat(b); ok && comm == name {
			out[pid] = t
		}
	}
	return out
}

// machineBusy is the busy time of all CPUs, from /proc/stat's first line; 0 if unreadable.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks
}

// Report is the CPU spent between two snapshots.
type Report struct {
	Window    time.Duration
	Self      time.Duration
	PG        time.Duration // valid when PGOK
	DB        time.Duration // of PG, the database's own backends (not the server's shared background processes)
	PGOK      bool
	PGProcs   int
	Named     map[string]time.Duration
	Machine   time.Duration // valid when MachineOK
	MachineOK bool
}

// Between is the CPU spent from a to b. A process that started in between counts from zero.
func Between(a, b Snapshot) Report {
	r := Report{Window: b.At.Sub(a.At), Self: b.Self - a.Self, Named: map[string]time.Duration{}}
	if a.Machine > 0 && b.Machine > 0 {
		r.MachineOK, r.Machine = true, b.Machine-a.Machine
	}
	if a.PGErr == nil && b.PGErr == nil {
		r.PGOK, r.PGProcs = true, len(b.PG)
		for pid, t := range b.PG {
			r.PG += t - a.PG[pid]
		}
		for pid, t := range b.DB {
			r.DB += t - a.DB[pid]
		}
	}
	for name, procs := range b.Named {
		for pid, t := range procs {
			r.Named[name] += t - a.Named[name][pid]
		}
	}
	return r
}

// Ceiling is the CPU-bound ceiling in units per second for n units of work: what the given
// cores could sustain if this process, PostgreSQL and the named processes had them to
// themselves. 0 when PostgreSQL's figure is unavailable.
func (r Report) Ceiling(n int64, cores int) float64 {
	if !r.PGOK || n <= 0 {
		return 0
	}
	all := r.Self + r.PG
	for _, t := range r.Named {
		all += t
	}
	if all <= 0 {
		return 0
	}
	return float64(cores) * float64(n) / all.Seconds()
}

// Write prints the report for n units of work, with the CPU-bound ceiling.
func (r Report) Write(w io.Writer, n int64, cores int, unit string) {
	if n <= 0 || r.Window <= 0 {
		return
	}
	per := func(d time.Duration) string { return (d / time.Duration(n)).Round(time.Microsecond).String() }
	use := func(d time.Duration) string { return fmt.Sprintf("%.2f cores", d.Seconds()/r.Window.Seconds()) }
	fmt.Fprintf(w, "CPU per %s: this process %s (%s)", unit, per(r.Self), use(r.Self))
	if r.PGOK {
		fmt.Fprintf(w, ", PostgreSQL %s (%s, %d processes)", per(r.PG), use(r.PG), r.PGProcs)
	} else {
		fmt.Fprintf(w, ", PostgreSQL unavailable")
	}
	names := make([]string, 0, len(r.Named))
	for name := range r.Named {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, ", %s %s (%s)", name, per(r.Named[name]), use(r.Named[name]))
	}
	if r.MachineOK {
		fmt.Fprintf(w, ", whole machine %s (%s of %d)", per(r.Machine), use(r.Machine), cores)
	}
	fmt.Fprintln(w)
	if c := r.Ceiling(n, cores); c > 0 {
		fmt.Fprintf(w, "CPU-bound ceiling on %d cores (these processes alone on the machine): ≈ %.0f %ss/s\n", cores, c, unit)
	}
}
