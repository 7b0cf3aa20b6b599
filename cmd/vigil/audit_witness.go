package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/witness"
)

// parseWitnesses parses witness specs "KEY" or "KEY@URL" (KEY: the witness's cosignature/v1
// verifier key; URL: its C2SP tlog-witness submission prefix).
func parseWitnesses(specs []string) ([]chain.WitnessEndpoint, error) {
	var out []chain.WitnessEndpoint
	for _, s := range specs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		key, url, _ := strings.Cut(s, "@")
		if _, err := witness.NewVerifier(key); err != nil {
			return nil, fmt.Errorf("witness %q: %w", s, err)
		}
		out = append(out, chain.WitnessEndpoint{URL: url, VerifierKey: key})
	}
	return out, nil
}

// witnessesFromEnv reads VIGIL_AUDIT_WITNESSES: whitespace-separated KEY@URL entries, the
// witnesses `vigil serve` submits every checkpoint to.
func witnessesFromEnv(ctx context.Context) ([]chain.WitnessEndpoint, error) {
	ws, err := parseWitnesses(strings.Fields(getenv(ctx, "VIGIL_AUDIT_WITNESSES")))
	if err != nil {
		return nil, fmt.Errorf("VIGIL_AUDIT_WITNESSES: %w", err)
	}
	return ws, nil
}

func newAuditWitnessCmd() *cobra.Command {
	var (
		listen, name, keyFile, state string
		logs                         []string
		printKey                     bool
	)
	cmd := &cobra.Command{
		Use:   "witness",
		Short: "Run a C2SP transparency-log witness for Vigil audit logs",
		Long: `Witness runs a C2SP tlog-witness (https://c2sp.org/tlog-witness) over HTTP: POST
/add-checkpoint. It cosigns a log's checkpoint (C2SP tlog-cosignature v1) only when it is a
consistent extension of the newest checkpoint it cosigned before, which it keeps in --state,
and refuses anything smaller or different (409): a truncated or rolled-back audit log can no
longer pass unnoticed. Run it where the operator of the Vigil installation cannot write: a
hospital's compliance office, a regulator, a third party (docs/audit.md "Witnessing"). Any
other C2SP witness (transparency-dev's omniwitness) works the same way.

--key-file holds the witness's Ed25519 seed (created, mode 0600, if missing); keep it off the
Vigil hosts. The witness prints its verifier key: give it to the installation
(VIGIL_AUDIT_WITNESSES="KEY@URL") and to 'vigil audit verify --witness KEY@URL'. Each --log is
ORIGIN=VERIFIER_KEY of one audit log's checkpoints ('vigil audit verify' prints both).`,
		Example: `  vigil audit witness --name witness.compliance.example-hospital.org --key-file /srv/witness/key \
    --state /srv/witness/state.json --listen :8480 \
    --log 'vigil.audit/0192…=vigil.audit/0192…+1a2b3c4d+AQ…'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			priv, err := witnessKey(keyFile)
			if err != nil {
				return err
			}
			cs, err := witness.NewCosigner(name, priv, nil)
			if err != nil {
				return err
			}
			if printKey {
				fmt.Fprintln(cmd.OutOrStdout(), cs.VerifierKey())
				return nil
			}
			lm := map[string]string{}
			for _, l := range logs {
				origin, vkey, ok := strings.Cut(l, "=")
				if !ok {
					return fmt.Errorf("--log %q: want ORIGIN=VERIFIER_KEY", l)
				}
				lm[origin] = vkey
			}
			w, err := witness.New(witness.Config{Cosigner: cs, Logs: lm, StateFile: state})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
			fmt.Fprintf(cmd.OutOrStdout(), "witness %s listening on %s\nverifier key: %s\n", name, ln.Addr(), cs.VerifierKey())
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case <-ctx.Done():
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				return srv.Shutdown(sctx)
			case err := <-errc:
				if errors.Is(err, http.ErrServerClosed) {
					return nil
				}
				return err
			}
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8480", "address to serve add-checkpoint on")
	cmd.Flags().StringVar(&name, "name", "", "the witness's name (a schema-less URL, e.g. witness.compliance.example.org)")
	cmd.Flags().StringVar(&keyFile, "key-file", "", "file of the witness's Ed25519 seed (created when missing)")
	cmd.Flags().StringVar(&state, "state", "witness-state.json", "file keeping the newest cosigned checkpoint of each log")
	cmd.Flags().StringArrayVar(&logs, "log", nil, "ORIGIN=VERIFIER_KEY of a log to witness (repeatable)")
	cmd.Flags().BoolVar(&printKey, "print-key", false, "print the witness's verifier key and exit")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("key-file")
	return cmd
}

// witnessKey reads the Ed25519 seed in path, or creates it (mode 0600).
func witnessKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(seed); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		slog.Info("witness key created", slog.String("file", path))
		return ed25519.NewKeyFromSeed(seed), nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) != ed25519.SeedSize {
		return nil, fmt.Errorf("witness key file %s: want a %d-byte Ed25519 seed", path, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(b), nil
}
