package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// sliceStore is a keys.RewrapStore over ciphertexts in memory (ids are indexes).
type sliceStore struct {
	mu   sync.Mutex
	rows [][]byte
}

func (s *sliceStore) NextSealed(_ context.Context, after string, limit int) ([]keys.StoredCiphertext, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := 0
	if after != "" {
		n, _ := strconv.Atoi(after)
		start = n + 1
	}
	var out []keys.StoredCiphertext
	for i := start; i < len(s.rows) && len(out) < limit; i++ {
		out = append(out, keys.StoredCiphertext{ID: strconv.Itoa(i), Old: s.rows[i]})
	}
	return out, nil
}

func (s *sliceStore) ReplaceSealed(_ context.Context, items []keys.StoredCiphertext) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range items {
		i, _ := strconv.Atoi(it.ID)
		if bytes.Equal(s.rows[i], it.Old) {
			s.rows[i] = it.New
		}
	}
	return nil
}

// `vigil keys init | list | rotate | public` on both backends, each change audited.
// Verifies: REQ-KEY-002, REQ-KEY-005, REQ-KEY-006, REQ-KEY-007, REQ-KEY-008, REQ-AUD-040
func TestKeysCommands(t *testing.T) {
	t.Parallel()
	vs := keystest.StartVault(t)
	// The subtests run one after the other: each swaps phiRewrapStores (a package variable).
	for _, backend := range []string{"local", "vault"} {
		t.Run(backend, func(t *testing.T) {
			pool, url := testdb.NewWithURL(t)
			env := map[string]string{"VIGIL_DATABASE_URL": url}
			dir := t.TempDir()
			if backend == "vault" {
				env["VIGIL_VAULT_ADDR"] = vs.Addr
				env["VIGIL_VAULT_TOKEN"] = vs.Token
				env["VIGIL_VAULT_KEY_PREFIX"] = "cli-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
			} else {
				env["VIGIL_VAULT_ADDR"] = ""
				env["VIGIL_KEYRING_PASSPHRASE"] = "a passphrase for the cli test"
				cheapLocalRing(t, dir, "a passphrase for the cli test")
			}
			ctx := withEnv(context.Background(), env)
			out, err := executeEnv(t, env, "keys", "init", "--data-dir", dir)
			if err != nil || !strings.Contains(out, "created audit-checkpoint:v1") {
				t.Fatalf("keys init = %q, %v", out, err)
			}
			// The keys' creation is audited, and every one of those events carries its
			// authentication tag although the key that tags them was created in the same
			// run (untagged, the shipper of a running server would refuse them).
			var created, untagged int
			if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE auth_mac IS NULL) FROM audit_events WHERE action = 'key.create'`).Scan(&created, &untagged); err != nil {
				t.Fatal(err)
			}
			if created == 0 || untagged != 0 {
				t.Errorf("keys init recorded %d key.create events, %d without a tag; want some, all tagged", created, untagged)
			}
			var logs bytes.Buffer
			b, _, err := openBackend(withLogger(ctx, slog.New(slog.NewTextHandler(&logs, nil))), dir, false)
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
			if got := strings.Contains(logs.String(), "NOT FOR PRODUCTION"); got != (backend == "local") {
				t.Errorf("opening the %s backend logged NOT FOR PRODUCTION = %v, want %v (log: %s)", backend, got, backend == "local", logs.String())
			}
			if out, err := executeEnv(t, env, "keys", "init", "--data-dir", dir); err != nil || !strings.Contains(out, "all keys exist") {
				t.Errorf("keys init again = %q, %v", out, err)
			}

			// Some stored PHI, sealed under v1, re-wrapped by rotate.
			ring, closeRing, err := openKeyRing(ctx, dir, false, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			defer closeRing(ctx) //nolint:errcheck
			phi := ring.PHI()
			st := &sliceStore{}
			for i := 0; i < 12; i++ {
				c, err := phi.Seal(ctx, []byte("patient "+strconv.Itoa(i)), []byte(strconv.Itoa(i)))
				if err != nil {
					t.Fatal(err)
				}
				st.rows = append(st.rows, c)
			}
			saved := phiRewrapStores
			phiRewrapStores = []func(*database) (string, keys.RewrapStore){func(*database) (string, keys.RewrapStore) { return "test rows", st }}
			defer func() { phiRewrapStores = saved }()

			out, err = executeEnv(t, env, "keys", "rotate", "phi-encryption", "--data-dir", dir, "--batch", "5")
			if err != nil || !strings.Contains(out, "phi-encryption:v2") || !strings.Contains(out, "re-wrapped 12 data keys in test rows") {
				t.Fatalf("keys rotate phi-encryption = %q, %v", out, err)
			}
			for i, c := range st.rows {
				if v, _ := keys.CiphertextVersion(c); v != 2 {
					t.Errorf("row %d key version after rotate = %d, want 2", i, v)
				}
				if got, err := phi.Open(ctx, c, []byte(strconv.Itoa(i))); err != nil || string(got) != "patient "+strconv.Itoa(i) {
					t.Errorf("Open(row %d) after rotate = %q, %v", i, got, err)
				}
			}
			if _, err := executeEnv(t, env, "keys", "rotate", "release-signing", "--data-dir", dir); err != nil {
				t.Fatal(err)
			}
			if _, err := executeEnv(t, env, "keys", "rotate", "phi-blind-index", "--data-dir", dir); err == nil {
				t.Errorf("keys rotate phi-blind-index = nil error, want refusal")
			}
			if _, err := executeEnv(t, env, "keys", "rotate", "nonsense", "--data-dir", dir); err == nil {
				t.Errorf("keys rotate nonsense = nil error, want an error")
			}

			out, err = executeEnv(t, env, "keys", "list", "--data-dir", dir)
			if err != nil || !strings.Contains(out, "release-signing") || !strings.Contains(out, "v2") {
				t.Errorf("keys list = %q, %v", out, err)
			}
			out, err = executeEnv(t, env, "keys", "public", "release-signing", "--data-dir", dir)
			if err != nil {
				t.Fatal(err)
			}
			rest, n := []byte(out), 0
			for {
				var blk *pem.Block
				blk, rest = pem.Decode(rest)
				if blk == nil {
					break
				}
				if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
					t.Errorf("keys public: block %d: %v", n, err)
				}
				n++
			}
			if n != 2 {
				t.Errorf("keys public release-signing printed %d keys, want 2", n)
			}

			if out, err := executeEnv(t, env, "keys", "policy", "server"); err != nil || !strings.Contains(out, "/sign/") {
				t.Errorf("keys policy server = %q, %v", out, err)
			}

			// Every change is in the audit trail.
			want := map[string]int{"key.create": len(keys.Purposes), "key.rotate": 2, "key.rewrap": 1}
			for action, n := range want {
				var got int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = $1 AND object_type = 'key'`, action).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != n {
					t.Errorf("audit events %s = %d, want %d", action, got, n)
				}
			}
		})
	}
}
