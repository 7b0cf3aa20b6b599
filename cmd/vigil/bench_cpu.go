package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// CPU accounting for the load tools. Throughput on a shared 2-core machine moves with whatever
// else runs; CPU time spent per upload moves much less, and says what the machine could do
// if the run had it to itself: the CPU-bound ceiling is cores ÷ (CPU per upload).
//
// It reads Linux's /proc; elsewhere, or when PostgreSQL runs on another host (its processes
// are not visible here), the figures it cannot take are reported as unavailable.

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's utime and stime: 100 on every Linux
// architecture Go supports (it is part of the kernel's user ABI, independent of CONFIG_HZ).
const clockTicks = 100

type cpuSnapshot struct {
	at      time.Time
	self    time.Duration         // this process (Vigil and, in the bench, its load generator)
	pg      map[int]time.Duration // PostgreSQL processes serving the bench database, and its auxiliaries
	machine time.Duration         // all CPUs busy time (user+nice+system+irq+softirq+steal)
	pgErr   error                 // why PostgreSQL's figure is unavailable
}

// takeCPUSnapshot records the CPU time used so far by this process, by the PostgreSQL
// backends connected to the pool's database plus the server's background processes (WAL
// writer, checkpointer, …), and by the whole machine.
func takeCPUSnapshot(ctx context.Context, pool *pgxpool.Pool) cpuSnapshot {
	s := cpuSnapshot{at: time.Now(), pg: map[int]time.Duration{}}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.machine = machineBusy()
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL`)
	if err != nil {
		s.pgErr = err
		return s
	}
	var pids []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err == nil {
			pids = append(pids, pid)
		}
	}
	rows.Close()
	for _, pid := range pids {
		t, err := procCPU(pid)
		if err != nil {
			if s.pgErr == nil && len(s.pg) == 0 {
				s.pgErr = err
			}
			continue
		}
		s.pg[pid] = t
	}
	if len(s.pg) > 0 {
		s.pgErr = nil
	} else if s.pgErr == nil {
		s.pgErr = fmt.Errorf("no PostgreSQL process visible in /proc")
	}
	return s
}

// procCPU is utime+stime of a process, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	t, ok := parseProcStat(b)
	if !ok {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return t, nil
}

// parseProcStat reads utime+stime from the text of /proc/<pid>/stat. The command name (field
// 2) is in parentheses and may itself contain spaces and parentheses: the fields after the
// last ')' start at field 3 (state); utime and stime are fields 14 and 15.
func parseProcStat(b []byte) (time.Duration, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 63)
	st, err2 := strconv.ParseUint(f[12], 10, 63)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * time.Second / clockTicks, true
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

// cpuReport is the CPU spent between two snapshots per unit of work.
type cpuReport struct {
	window          time.Duration
	self, pg, mach  time.Duration // totals over the window
	pgOK, machineOK bool
	pgProcs         int
}

func cpuBetween(a, b cpuSnapshot) cpuReport {
	r := cpuReport{window: b.at.Sub(a.at), self: b.self - a.self, machineOK: a.machine > 0 && b.machine > 0}
	if r.machineOK {
		r.mach = b.machine - a.machine
	}
	if a.pgErr == nil && b.pgErr == nil {
		r.pgOK = true
		for pid, t := range b.pg {
			// A backend that connected during the window counts from zero.
			r.pg += t - a.pg[pid]
		}
		r.pgProcs = len(b.pg)
	}
	return r
}

// write prints the report for n units of work (uploads), with the CPU-bound ceiling: what
// the machine's cores could sustain if Vigil and PostgreSQL had them to themselves.
func (r cpuReport) write(w io.Writer, n int64, cores int, unit string) {
	if n <= 0 || r.window <= 0 {
		return
	}
	per := func(d time.Duration) string {
		return (d / time.Duration(n)).Round(time.Microsecond).String()
	}
	use := func(d time.Duration) string { return fmt.Sprintf("%.2f cores", d.Seconds()/r.window.Seconds()) }
	fmt.Fprintf(w, "CPU per %s: vigil process %s (%s, incl. the in-process load generator)", unit, per(r.self), use(r.self))
	if r.pgOK {
		fmt.Fprintf(w, ", PostgreSQL %s (%s, %d processes)", per(r.pg), use(r.pg), r.pgProcs)
	} else {
		fmt.Fprintf(w, ", PostgreSQL unavailable")
	}
	if r.machineOK {
		fmt.Fprintf(w, ", whole machine %s (%s of %d)", per(r.mach), use(r.mach), cores)
	}
	fmt.Fprintln(w)
	if r.pgOK {
		both := r.self + r.pg
		fmt.Fprintf(w, "CPU-bound ceiling on %d cores (vigil + PostgreSQL alone on the machine): ≈ %.0f %ss/s\n",
			cores, float64(cores)*float64(n)/both.Seconds(), unit)
	}
}
