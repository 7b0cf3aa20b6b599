package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/internal/schema"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
)

// execute runs vigil with args in the process's environment.
func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return executeEnv(t, nil, args...)
}

// executeEnv runs vigil with args, its commands seeing the variables of env over the
// process's environment (withEnv): each test gives its commands their environment instead of
// t.Setenv, which would forbid t.Parallel. The commands leave the process's loggers alone
// (withFixedLogging): re-routing klog would race with the embedded Trillian of other tests.
func executeEnv(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(withFixedLogging(withEnv(context.Background(), env)))
	return out.String(), err
}

// Every command documents itself in --help.
// Verifies: REQ-FND-001
func TestEveryCommandHasHelp(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			if strings.TrimSpace(sub.Short) == "" {
				t.Errorf("vigil %s: no Short description", sub.CommandPath())
			}
			out, err := execute(t, append(strings.Fields(strings.TrimPrefix(sub.CommandPath(), "vigil ")), "--help")...)
			if err != nil || !strings.Contains(out, "Usage:") {
				t.Errorf("%s --help = %q, %v; want usage text", sub.CommandPath(), out, err)
			}
			walk(sub)
		}
	}
	walk(newRoot())
	out, err := execute(t, "version")
	if err != nil || !strings.Contains(out, "vigil ") {
		t.Errorf("vigil version = %q, %v", out, err)
	}
}

// No flag of any command takes a secret: secrets come from the environment.
// Verifies: REQ-FND-001
func TestNoSecretFlags(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, name := range []string{"database-url", "password", "token", "passphrase", "secret"} {
			if f := c.Flags().Lookup(name); f != nil {
				t.Errorf("%s has flag --%s: secrets come from the environment only", c.CommandPath(), name)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
}

// migrate --status and serve refuse a schema that does not match the binary.
// Verifies: REQ-FND-002
func TestServeRefusesMismatchedSchema(t *testing.T) {
	t.Parallel()
	url := testdb.NewEmpty(t)
	env := map[string]string{"VIGIL_DATABASE_URL": url}
	dataDir := t.TempDir()

	_, err := executeEnv(t, env, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir)
	if !errors.Is(err, schema.ErrSchemaBehind) {
		t.Fatalf("serve on an empty database: error = %v, want ErrSchemaBehind", err)
	}
	out, err := executeEnv(t, env, "migrate", "--status")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("migrate --status (behind) = %q, %v; want exit code 1", out, err)
	}
	if out, err := executeEnv(t, env, "migrate"); err != nil || !strings.Contains(out, "applied") {
		t.Fatalf("migrate = %q, %v", out, err)
	}
	if out, err := executeEnv(t, env, "migrate", "--status"); err != nil {
		t.Errorf("migrate --status (current) = %q, %v; want success", out, err)
	}

	pool, err := openPool(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	_, err = pool.Exec(context.Background(), "INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)", schema.LatestVersion()+1)
	pool.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = executeEnv(t, env, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir)
	if !errors.Is(err, schema.ErrSchemaAhead) {
		t.Errorf("serve on a newer schema: error = %v, want ErrSchemaAhead", err)
	}
}

// `vigil demo` with no database configured starts a private cluster, serves, and on
// shutdown leaves no PostgreSQL process behind. It migrated as the owner and serves as the
// application role: every connection the server holds is the login in vigil_app, and that
// login cannot delete or rewrite an audit event; its own verification of the trail ran at
// start and stored its result (demoRunsAsAppRole).
// Verifies: REQ-FND-008, REQ-AUD-074, REQ-AUD-070
func TestDemoPrivateClusterLeavesNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster; run without -short")
	}
	t.Parallel()
	dataDir := t.TempDir()
	cheapLocalRing(t, dataDir, demoPassphrase)
	port := freeTestPort(t)
	ctx, cancel := context.WithCancel(withEnv(context.Background(), map[string]string{"VIGIL_DATABASE_URL": ""}))
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, runConfig{Listen: "127.0.0.1:" + port, DataDir: dataDir, Demo: true})
	}()
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + port + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("demo exited early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("demo not ready after 90s (last error %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pidFile := filepath.Join(dataDir, "postgres", "data", "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		t.Errorf("private cluster not running under the data directory: %v", err)
	}
	demoRunsAsAppRole(t, pidFile)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo shutdown error = %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("demo did not stop within 90s of cancellation")
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid still present after shutdown (err %v)", err)
	}
	out, _ := exec.Command("pgrep", "-f", "postgres.*"+dataDir).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("postgres processes left behind for %s: %s", dataDir, s)
	}
}

func freeTestPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}

// The shipped binary carries no load generator: no bench command, and none of the load
// tools' code in its dependency closure (they are cmd/vigil-bench).
// Verifies: REQ-FND-011
func TestNoLoadToolsInTheShippedBinary(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Name() == "bench" {
				t.Errorf("%s: a load generator in the shipped binary (it belongs in vigil-bench)", sub.CommandPath())
			}
			walk(sub)
		}
	}
	walk(newRoot())
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasSuffix(p, "/cmd/vigil-bench") || strings.HasSuffix(p, "/internal/cpuacct") {
			t.Errorf("vigil depends on %s, a load tool's package", p)
		}
	}
}

// cheapLocalRing creates the local key ring under dataDir with a low scrypt cost (the
// passphrase guards nothing in a test); the commands under test then open it with the
// parameters stored in it instead of deriving the production-strength key every time.
func cheapLocalRing(t *testing.T, dataDir, passphrase string) {
	t.Helper()
	l, err := keys.NewLocal(keys.LocalConfig{Dir: filepath.Join(dataDir, "keys"), Passphrase: []byte(passphrase), ScryptN: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// commandRing gives a command test its environment (the database at url, the local key ring's
// passphrase) and a data directory holding an initialised local key ring, so the command's
// audit events are authenticated as a real installation's are.
func commandRing(t *testing.T, url string) (map[string]string, string) {
	t.Helper()
	const pass = "a passphrase for a command test"
	dir := t.TempDir()
	cheapLocalRing(t, dir, pass)
	env := map[string]string{"VIGIL_DATABASE_URL": url, "VIGIL_KEYRING_PASSPHRASE": pass, "VIGIL_VAULT_ADDR": ""}
	if out, err := executeEnv(t, env, "keys", "init", "--data-dir", dir); err != nil {
		t.Fatalf("vigil keys init = %v\n%s", err, out)
	}
	return env, dir
}

// demoRunsAsAppRole checks, on the running demo's private cluster (its port from
// postmaster.pid), that the server's connections to the database are all the login "vigil"
// (a member of vigil_app, not the owner and not a superuser) and that this login cannot
// delete or rewrite an audit event.
func demoRunsAsAppRole(t *testing.T, pidFile string) {
	t.Helper()
	ctx := context.Background()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		t.Fatalf("postmaster.pid: %q", b)
	}
	port := strings.TrimSpace(lines[3])
	app, err := pgx.Connect(ctx, "postgres://"+demoLogin+"@127.0.0.1:"+port+"/"+demoDatabase+"?sslmode=disable")
	if err != nil {
		t.Fatalf("connect as the demo's server login: %v", err)
	}
	defer app.Close(ctx)
	var super, owner, member bool
	if err := app.QueryRow(ctx, `SELECT rolsuper, pg_has_role(current_user, $1, 'MEMBER'), pg_has_role(current_user, 'vigil_app', 'MEMBER')
		FROM pg_roles WHERE rolname = current_user`, demoOwner).Scan(&super, &owner, &member); err != nil {
		t.Fatal(err)
	}
	if super || owner || !member {
		t.Errorf("the demo's server login: superuser %v, member of the owner %v, of vigil_app %v; want only vigil_app", super, owner, member)
	}
	rows, err := app.Query(ctx, `SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err != nil {
		t.Fatal(err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0] != demoLogin {
		t.Errorf("the demo's connections to its database are of %v, want only %q", users, demoLogin)
	}
	// The server's own verification ran at start, as vigil_app, and stored its result.
	var runs int
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := app.QueryRow(ctx, `SELECT count(*) FROM audit_verifications WHERE finished_at IS NOT NULL AND error IS NULL`).Scan(&runs); err != nil {
			t.Fatal(err)
		}
		if runs > 0 || time.Now().After(deadline) {
			break
		}
	}
	if runs == 0 {
		t.Errorf("no finished verification run in audit_verifications 60 s after the demo started")
	}
	var n int
	if err := app.QueryRow(ctx, `SELECT count(*) FROM audit_events`).Scan(&n); err != nil || n == 0 {
		t.Fatalf("audit events seen by the server login: %d, %v; want some", n, err)
	}
	for _, attack := range []string{
		`DELETE FROM audit_events WHERE id = (SELECT id FROM audit_events ORDER BY seq LIMIT 1)`,
		`UPDATE audit_events SET action = 'forged.action' WHERE id = (SELECT id FROM audit_events ORDER BY seq LIMIT 1)`,
		`TRUNCATE audit_events`,
	} {
		_, err := app.Exec(ctx, attack)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("as the demo's server login, %s: error %v, want insufficient_privilege (42501)", attack, err)
		}
	}
}
