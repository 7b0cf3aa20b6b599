// Package pgcluster runs a private, throwaway PostgreSQL cluster with the system's own
// initdb and pg_ctl, for `vigil demo` on a machine where PostgreSQL is installed but no
// database was configured.
//
// When the process runs as root (PostgreSQL refuses to), the cluster's files are owned by the
// `postgres` system user and the server runs as that user.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotInstalled means no PostgreSQL server binaries were found.
var ErrNotInstalled = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found")

// Cluster is a running private cluster.
type Cluster struct {
	dir  string // data directory
	sock string // socket directory
	port int
	bin  string
	cred *syscall.Credential
	logf string
}

// Config of a private cluster.
type Config struct {
	// Dir is the directory that holds the cluster (created if missing). Required.
	Dir string
	// BinDir holds initdb and pg_ctl. Default: found on PATH, then with `pg_config --bindir`,
	// then the newest /usr/lib/postgresql/*/bin (Debian's layout).
	BinDir string
	// Port to listen on (127.0.0.1 only). Default: a free port.
	Port int
}

// Start initializes the cluster on first use, stops a server left running by an earlier
// process that died, and starts it. The caller MUST call Stop.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	bin, err := findBinDir(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: filepath.Join(dir, "data"), sock: filepath.Join(dir, "sock"), bin: bin, logf: filepath.Join(dir, "postgres.log")}
	if err := os.MkdirAll(c.sock, 0o700); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if os.Geteuid() == 0 {
		cred, uid, gid, err := postgresUser()
		if err != nil {
			return nil, err
		}
		c.cred = cred
		for _, p := range []string{dir, c.sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, fmt.Errorf("pgcluster: chown %s: %w", p, err)
			}
		}
		// The postgres user must be able to reach the cluster directory.
		for p := filepath.Dir(dir); p != "/" && p != "."; p = filepath.Dir(p) {
			if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o001 == 0 {
				if err := os.Chmod(p, st.Mode().Perm()|0o001); err != nil {
					return nil, fmt.Errorf("pgcluster: make %s traversable: %w", p, err)
				}
			}
		}
	}
	if _, err := os.Stat(filepath.Join(c.dir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := c.run(ctx, "initdb", "-D", c.dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"); err != nil {
			return nil, fmt.Errorf("pgcluster: initdb: %w", err)
		}
	}
	// A server left behind by a process that was killed is stopped first.
	if _, err := os.Stat(filepath.Join(c.dir, "postmaster.pid")); err == nil {
		_ = c.run(ctx, "pg_ctl", "-D", c.dir, "-m", "fast", "-w", "stop")
	}
	c.port = cfg.Port
	if c.port == 0 {
		if c.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=200 -c fsync=on", c.port, c.sock)
	if err := c.run(ctx, "pg_ctl", "-D", c.dir, "-l", c.logf, "-o", opts, "-w", "-t", "60", "start"); err != nil {
		return nil, fmt.Errorf("pgcluster: start (log in %s): %w", c.logf, err)
	}
	return c, nil
}

// URL is the connection URL of the cluster's postgres database.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// Stop shuts the server down (fast mode) and waits until it has exited.
func (c *Cluster) Stop(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.dir, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("pgcluster: stop: %w", err)
	}
	return nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func postgresUser() (*syscall.Credential, int, int, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("pgcluster: running as root needs the 'postgres' system user (installed with PostgreSQL): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

func findBinDir(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitReady polls until a TCP connection to the cluster succeeds or ctx ends.
func (c *Cluster) WaitReady(ctx context.Context) error {
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.port), time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
