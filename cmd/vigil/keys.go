package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/keys"
)

func init() { subcommands = append(subcommands, newKeysCmd) }

// phiRewrapStores lists the stores of envelope-encrypted PHI that `vigil keys rotate
// phi-encryption` re-wraps after the rotation. The area that stores PHI columns appends a
// constructor here from its own file (cmd/vigil/<area>.go), e.g.
//
//	func init() { phiRewrapStores = append(phiRewrapStores, func(db *database) (string, keys.RewrapStore) { … }) }
var phiRewrapStores []func(db *database) (name string, store keys.RewrapStore)

// keyActorKey carries the audit actor of key operations in a context.
type keyActorKey struct{}

// withKeyActor sets who performs the key operations done with ctx (default: the service).
func withKeyActor(ctx context.Context, a audit.Actor) context.Context {
	return context.WithValue(ctx, keyActorKey{}, a)
}

func keyActor(ctx context.Context) audit.Actor {
	if a, ok := ctx.Value(keyActorKey{}).(audit.Actor); ok {
		return a
	}
	return audit.Actor{Kind: audit.ActorService, ID: "vigil", AuthMethod: "internal"}
}

// cliActor is the operator running a `vigil keys` command.
func cliActor() audit.Actor {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return audit.Actor{Kind: audit.ActorService, ID: "vigil-cli:" + name, AuthMethod: "local-shell"}
}

// auditKeyOperations connects the key ring's hook to the audit recorder: each key operation is
// an audit event, group-committed (it changes nothing in the database). If it cannot be
// recorded the ring withholds the result.
func auditKeyOperations(rec audit.Recorder, backend string) keys.OnOperation {
	return func(ctx context.Context, op keys.Operation) error {
		payload := map[string]any{"purpose": string(op.Purpose), "count": op.Count, "backend": backend}
		if len(op.Digest) > 0 {
			payload["sha256"] = hex.EncodeToString(op.Digest)
		}
		_, err := rec.RecordNow(ctx, audit.Event{
			Time:    op.At,
			Actor:   keyActor(ctx),
			Action:  string(op.Kind),
			Object:  audit.Object{Type: "key", ID: op.KeyID},
			Outcome: audit.OutcomeSuccess,
			Payload: payload,
		})
		return err
	}
}

// secretEnv reads a secret from NAME or from the file named by NAME_FILE.
func secretEnv(ctx context.Context, name string) (string, error) {
	if v := getenv(ctx, name); v != "" {
		return v, nil
	}
	if f := getenv(ctx, name+"_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("%s_FILE: %w", name, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

// openBackend opens the key backend: Vault Transit when VIGIL_VAULT_ADDR is set, otherwise the
// local key ring in <dataDir>/keys (logged as not for production).
func openBackend(ctx context.Context, dataDir string, demo bool) (keys.Backend, string, error) {
	if addr := getenv(ctx, "VIGIL_VAULT_ADDR"); addr != "" {
		// A token file (e.g. a Vault Agent sink) is re-read by keys.Vault when the token is refused.
		tok, tokFile := getenv(ctx, "VIGIL_VAULT_TOKEN"), ""
		if tok == "" {
			tokFile = getenv(ctx, "VIGIL_VAULT_TOKEN_FILE")
		}
		sid, err := secretEnv(ctx, "VIGIL_VAULT_SECRET_ID")
		if err != nil {
			return nil, "", err
		}
		v, err := keys.NewVault(ctx, keys.VaultConfig{
			Address:         addr,
			Token:           tok,
			TokenFile:       tokFile,
			AppRoleID:       getenv(ctx, "VIGIL_VAULT_ROLE_ID"),
			AppRoleSecretID: sid,
			AppRoleMount:    getenv(ctx, "VIGIL_VAULT_APPROLE_MOUNT"),
			Namespace:       getenv(ctx, "VIGIL_VAULT_NAMESPACE"),
			Mount:           getenv(ctx, "VIGIL_VAULT_TRANSIT_MOUNT"),
			KeyPrefix:       getenv(ctx, "VIGIL_VAULT_KEY_PREFIX"),
			CACert:          getenv(ctx, "VIGIL_VAULT_CACERT"),
			ClientCert:      getenv(ctx, "VIGIL_VAULT_CLIENT_CERT"),
			ClientKey:       getenv(ctx, "VIGIL_VAULT_CLIENT_KEY"),
			TLSServerName:   getenv(ctx, "VIGIL_VAULT_TLS_SERVER_NAME"),
		})
		if err != nil {
			return nil, "", fmt.Errorf("open Vault key backend at %s: %w", addr, err)
		}
		ctxLogger(ctx).InfoContext(ctx, "keys: using Vault Transit", slog.String("addr", addr))
		return v, "vault", nil
	}
	pass, err := secretEnv(ctx, "VIGIL_KEYRING_PASSPHRASE")
	if err != nil {
		return nil, "", err
	}
	if pass == "" {
		if !demo {
			return nil, "", errors.New("neither VIGIL_VAULT_ADDR (Vault Transit, for production) nor VIGIL_KEYRING_PASSPHRASE (local key ring, not for production) is set")
		}
		pass = demoPassphrase
	}
	ctxLogger(ctx).WarnContext(ctx, keys.LocalWarning, slog.String("dir", filepath.Join(dataDir, "keys")))
	l, err := keys.NewLocal(keys.LocalConfig{Dir: filepath.Join(dataDir, "keys"), Passphrase: []byte(pass)})
	if err != nil {
		return nil, "", fmt.Errorf("open local key ring: %w", err)
	}
	return l, "local", nil
}

// openKeyRing opens the key ring for serve/demo/commands; with a recorder, key operations are
// audited. create makes missing keys (serve/demo/init do; read-only commands do not).
func openKeyRing(ctx context.Context, dataDir string, demo bool, rec audit.Recorder, create bool) (*keys.Ring, func(context.Context) error, error) {
	b, name, err := openBackend(ctx, dataDir, demo)
	if err != nil {
		return nil, nil, err
	}
	cfg := keys.Config{Backend: b}
	// The recorder's events are authenticated with a key this ring wraps (audit.go), which
	// EnsureKeys may be about to create: the operations before the recorder is authenticated
	// (the keys' creation) are held and recorded right after, with the time they happened, so
	// that none of them reaches the log untagged (the shipper would refuse it and raise an
	// incident on every running server).
	var held *heldKeyOperations
	if rec != nil {
		held = &heldKeyOperations{hook: auditKeyOperations(rec, name), holding: true}
		cfg.OnOperation = held.on
	}
	ring, err := keys.NewRing(cfg)
	if err != nil {
		_ = b.Close()
		return nil, nil, err
	}
	if create {
		if _, err := ring.EnsureKeys(ctx); err != nil {
			_ = ring.Close()
			if errors.Is(err, keys.ErrPermissionDenied) {
				return nil, nil, fmt.Errorf("%w (a key is missing and this server's policy may not create it: run `vigil keys init` with the admin policy, see docs/operations.md)", err)
			}
			return nil, nil, err
		}
	}
	if rec != nil {
		err := authenticateEvents(ctx, rec, ring)
		if err == nil && eventsAuthenticated(rec) {
			err = held.release(ctx)
		}
		if err != nil {
			_ = ring.Close()
			return nil, nil, err
		}
	}
	// Still holding: the ring has no key to tag events with yet (vigil keys init before it
	// creates them). The operations wait until the ring is closed, when the keys exist.
	return ring, func(ctx context.Context) error {
		var err error
		if held != nil && held.isHolding() {
			if err = authenticateEvents(ctx, rec, ring); err == nil {
				err = held.release(ctx)
			}
		}
		return errors.Join(err, ring.Close())
	}, nil
}

// eventsAuthenticated reports whether rec tags its events (only the outbox does; a recorder
// of another kind has nothing to wait for).
func eventsAuthenticated(rec audit.Recorder) bool {
	o, ok := rec.(*audit.Outbox)
	return !ok || o.Authenticated()
}

// heldKeyOperations records the key ring's operations through hook, except that while holding
// it keeps the keys' creations, to be recorded by release.
type heldKeyOperations struct {
	hook    keys.OnOperation
	mu      sync.Mutex
	holding bool
	ops     []keys.Operation
}

func (h *heldKeyOperations) on(ctx context.Context, op keys.Operation) error {
	h.mu.Lock()
	// Only the keys' creation waits: any other operation (a signature, a decryption) is
	// recorded before its result is given, as the ring's hook promises.
	if h.holding && op.Kind == keys.OpCreate {
		h.ops = append(h.ops, op)
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	return h.hook(ctx, op)
}

func (h *heldKeyOperations) isHolding() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.holding
}

// release records the held operations in order and stops holding.
func (h *heldKeyOperations) release(ctx context.Context) error {
	h.mu.Lock()
	ops := h.ops
	h.ops, h.holding = nil, false
	h.mu.Unlock()
	for _, op := range ops {
		if err := h.hook(ctx, op); err != nil {
			return fmt.Errorf("record the key ring's %s of %s: %w", op.Kind, op.KeyID, err)
		}
	}
	return nil
}

// keysReady is the readiness check of the key ring: the audit checkpoint key must be readable
// (a sealed or unreachable Vault makes the instance not ready).
func keysReady(ring *keys.Ring) func(ctx context.Context) (any, error) {
	return func(ctx context.Context) (any, error) {
		ki, err := ring.Info(ctx, keys.AuditCheckpoint)
		if err != nil {
			return nil, err
		}
		return map[string]any{"audit_checkpoint_version": ki.Latest}, nil
	}
}

func parsePurpose(s string) (keys.Purpose, error) {
	p := keys.Purpose(s)
	if !p.Valid() {
		var names []string
		for _, q := range keys.Purposes {
			names = append(names, string(q))
		}
		return "", fmt.Errorf("unknown key purpose %q (one of %s)", s, strings.Join(names, ", "))
	}
	return p, nil
}

func newKeysCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage Vigil's keys (Vault Transit, or the local key ring for demos)",
		Long: `Manage Vigil's keys, named by purpose: audit-checkpoint, receipt-signing, release-signing,
phi-encryption, webhook-hmac, phi-blind-index.

The backend is Vault Transit when VIGIL_VAULT_ADDR is set (token in VIGIL_VAULT_TOKEN, or
AppRole in VIGIL_VAULT_ROLE_ID and VIGIL_VAULT_SECRET_ID; each secret may instead be read from
a file named by <NAME>_FILE; TLS with VIGIL_VAULT_CACERT, VIGIL_VAULT_CLIENT_CERT,
VIGIL_VAULT_CLIENT_KEY). Otherwise it is the local key ring in <data-dir>/keys, sealed with
VIGIL_KEYRING_PASSPHRASE: not for production.

Commands that change keys (init, rotate) record audit events and need VIGIL_DATABASE_URL.
See docs/operations.md for running Vault for Vigil.`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", envOr("VIGIL_DATA_DIR", "./.vigil"), "directory of the local key ring (env VIGIL_DATA_DIR)")

	auditedRing := func(ctx context.Context) (*keys.Ring, func() error, error) {
		url := getenv(ctx, "VIGIL_DATABASE_URL")
		if url == "" {
			return nil, nil, errors.New("VIGIL_DATABASE_URL is not set: key changes are recorded in the audit trail")
		}
		db, err := openDB(ctx, url)
		if err != nil {
			return nil, nil, err
		}
		ring, closeRing, err := openKeyRing(ctx, dataDir, false, db.rec, false)
		if err != nil {
			db.Close()
			return nil, nil, err
		}
		// Closing the ring records what it still holds (the keys' creation by init): its
		// error is the command's.
		return ring, func() error { err := closeRing(ctx); db.Close(); return err }, nil
	}

	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create every missing key (existing keys are left as they are)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			ctx := withKeyActor(cmd.Context(), cliActor())
			ring, done, err := auditedRing(ctx)
			if err != nil {
				return err
			}
			defer func() { err = errors.Join(err, done()) }()
			created, err := ring.EnsureKeys(ctx)
			if err != nil {
				return err
			}
			for _, p := range created {
				fmt.Fprintf(cmd.OutOrStdout(), "created %s\n", keys.KeyID(p, 1))
			}
			if len(created) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "all keys exist")
			}
			return nil
		},
	}

	listCmd := &cobra.Command{
		Use:   "list",
		Short: "Show each key's algorithm and live versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			ring, closeRing, err := openKeyRing(ctx, dataDir, false, nil, false)
			if err != nil {
				return err
			}
			defer closeRing(ctx) //nolint:errcheck
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PURPOSE\tALGORITHM\tLATEST\tOLDEST LIVE")
			for _, p := range keys.Purposes {
				ki, err := ring.Info(ctx, p)
				if errors.Is(err, keys.ErrKeyNotFound) {
					fmt.Fprintf(w, "%s\t%s\t-\t- (missing: run `vigil keys init`)\n", p, p.Algorithm())
					continue
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s\t%s\tv%d\tv%d\n", p, ki.Algorithm, ki.Latest, ki.MinDecrypt)
			}
			return w.Flush()
		},
	}

	var noRewrap, rewrapOnly bool
	var batch int
	rotateCmd := &cobra.Command{
		Use:   "rotate <purpose>",
		Short: "Add a new version of a key; for phi-encryption, re-wrap stored data keys",
		Long: `Add a new version of a key. New signatures, MACs and data keys use it at once (running
servers pick it up within seconds); older versions keep verifying and decrypting, so nothing
stops. For phi-encryption the data keys of stored PHI are then re-wrapped under the new version
in batches, without decrypting the PHI and while the server keeps serving (--no-rewrap skips it;
run the command again later to finish). phi-blind-index is never rotated.`,
		Example: `  VIGIL_DATABASE_URL=… VIGIL_VAULT_ADDR=https://vault:8200 VIGIL_VAULT_TOKEN=… vigil keys rotate phi-encryption
  vigil keys rotate release-signing`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := parsePurpose(args[0])
			if err != nil {
				return err
			}
			ctx := withKeyActor(cmd.Context(), cliActor())
			url := getenv(ctx, "VIGIL_DATABASE_URL")
			if url == "" {
				return errors.New("VIGIL_DATABASE_URL is not set: key changes are recorded in the audit trail")
			}
			db, err := openDB(ctx, url)
			if err != nil {
				return err
			}
			defer db.Close()
			ring, closeRing, err := openKeyRing(ctx, dataDir, false, db.rec, false)
			if err != nil {
				return err
			}
			defer closeRing(ctx) //nolint:errcheck
			if rewrapOnly && p != keys.PHIEncryption {
				return errors.New("--rewrap-only applies to phi-encryption only")
			}
			if !rewrapOnly {
				v, err := ring.Rotate(ctx, p)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rotated %s: new version %s\n", p, keys.KeyID(p, v))
			}
			if p != keys.PHIEncryption || noRewrap {
				return nil
			}
			env, err := ring.Envelope(keys.PHIEncryption)
			if err != nil {
				return err
			}
			for _, mk := range phiRewrapStores {
				name, st := mk(db)
				n, err := env.RewrapAll(ctx, st, batch)
				if err != nil {
					return fmt.Errorf("re-wrap %s stopped after %d: %w (old versions still decrypt; finish with `vigil keys rotate phi-encryption --rewrap-only`)", name, n, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "re-wrapped %d data keys in %s\n", n, name)
			}
			return nil
		},
	}
	rotateCmd.Flags().BoolVar(&noRewrap, "no-rewrap", false, "do not re-wrap stored PHI data keys after rotating phi-encryption")
	rotateCmd.Flags().BoolVar(&rewrapOnly, "rewrap-only", false, "do not rotate; only re-wrap stored PHI data keys still under older versions")
	rotateCmd.Flags().IntVar(&batch, "batch", 500, "ciphertexts re-wrapped per database batch")

	publicCmd := &cobra.Command{
		Use:   "public <purpose>",
		Short: "Print the PEM public keys of a signing key's live versions (e.g. for cosign verify)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := parsePurpose(args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ring, closeRing, err := openKeyRing(ctx, dataDir, false, nil, false)
			if err != nil {
				return err
			}
			defer closeRing(ctx) //nolint:errcheck
			pks, err := ring.PublicKeys(ctx, p)
			if err != nil {
				return err
			}
			for _, pk := range pks {
				der, err := x509.MarshalPKIXPublicKey(pk.Key)
				if err != nil {
					return err
				}
				if err := pem.Encode(cmd.OutOrStdout(), &pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"Key-Id": pk.KeyID}, Bytes: der}); err != nil {
					return err
				}
			}
			return nil
		},
	}

	policyCmd := &cobra.Command{
		Use:   "policy <server|release|admin>",
		Short: "Print the least-privilege Vault policy (HCL) of a role",
		Long: `Print the least-privilege Vault policy of a role, for the Transit mount and key prefix
in VIGIL_VAULT_TRANSIT_MOUNT and VIGIL_VAULT_KEY_PREFIX (defaults transit and vigil-):
server (vigil serve), release (the release job), admin (vigil keys init/rotate).`,
		Example: `  vigil keys policy server | vault policy write vigil-server -`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			hcl, err := keys.VaultPolicy(keys.VaultRole(args[0]), getenv(cmd.Context(), "VIGIL_VAULT_TRANSIT_MOUNT"), getenv(cmd.Context(), "VIGIL_VAULT_KEY_PREFIX"))
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), hcl)
			return err
		},
	}

	cmd.AddCommand(initCmd, listCmd, rotateCmd, publicCmd, policyCmd)
	return cmd
}
