package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/every"
)

// The demo runs with the database roles of docs/operations.md "Database roles", like a
// production installation: it migrates as the owner and serves as the application role
// vigil_app (migration 00112), which may read and append the audit trail but not rewrite or
// delete it.

// Names of the private cluster's roles and database.
const (
	demoOwner    = "vigil_owner" // owns the database and its tables: migrations, partitions
	demoLogin    = "vigil"       // the server's login, a member of vigil_app and nothing else
	demoDatabase = "vigil"
)

// demoClusterRoles makes, on the private cluster (superURL: its superuser), the owner, the
// group vigil_app, the server's login in it and the database owned by the owner (each only
// if missing), and returns the owner's and the server's URLs of that database.
func demoClusterRoles(ctx context.Context, superURL string) (ownerURL, appURL string, err error) {
	conn, err := pgx.Connect(ctx, superURL)
	if err != nil {
		return "", "", fmt.Errorf("demo database roles: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, r := range []struct{ name, attrs string }{
		{demoOwner, "LOGIN"}, {"vigil_app", "NOLOGIN"}, {demoLogin, "LOGIN IN ROLE vigil_app"},
	} {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, r.name).Scan(&exists); err != nil {
			return "", "", fmt.Errorf("demo database roles: %w", err)
		}
		if !exists {
			if _, err := conn.Exec(ctx, "CREATE ROLE "+pgx.Identifier{r.name}.Sanitize()+" "+r.attrs); err != nil {
				return "", "", fmt.Errorf("demo database roles: create %s: %w", r.name, err)
			}
		}
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, demoDatabase).Scan(&exists); err != nil {
		return "", "", fmt.Errorf("demo database: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{demoDatabase}.Sanitize()+" OWNER "+pgx.Identifier{demoOwner}.Sanitize()); err != nil {
			return "", "", fmt.Errorf("demo database: %w", err)
		}
	}
	if ownerURL, err = withUserDB(superURL, demoOwner, demoDatabase); err != nil {
		return "", "", err
	}
	if appURL, err = withUserDB(superURL, demoLogin, demoDatabase); err != nil {
		return "", "", err
	}
	return ownerURL, appURL, nil
}

// withUserDB is the URL u with its user and database replaced.
func withUserDB(u, user, db string) (string, error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	p.User = url.User(user)
	p.Path = "/" + db
	return p.String(), nil
}

// demoAppURL is, for a database the user gave the demo (VIGIL_DATABASE_URL, the owner's or a
// superuser's login), the same login acting as vigil_app (the session's role, set at
// connection), when vigil_app exists and the login may take it; otherwise the URL unchanged,
// with a warning that the server runs with the owner's privileges.
func demoAppURL(ctx context.Context, ownerURL string) string {
	conn, err := pgx.Connect(ctx, ownerURL)
	if err == nil {
		defer conn.Close(context.WithoutCancel(ctx))
		var may bool
		err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_app') AND pg_has_role('vigil_app', 'MEMBER')`).Scan(&may)
		if err == nil && may {
			sep := "?"
			if strings.Contains(ownerURL, "?") {
				sep = "&"
			}
			return ownerURL + sep + "role=vigil_app"
		}
	}
	slog.WarnContext(ctx, "demo: the server runs with the migrating login's privileges, not vigil_app's (docs/operations.md \"Database roles\")",
		slog.Any("error", err))
	return ownerURL
}

// demoOwnerMaintenance keeps the clinical core's daily partitions made ahead as the owner
// (vigil_app has no DDL): now, then hourly until ctx ends. Each pass opens and closes its own
// connection, so that the server's are the only ones left open. stop ends it and waits.
func demoOwnerMaintenance(ctx context.Context, ownerURL string) (stop func(), err error) {
	pass := func(ctx context.Context) error {
		pool, err := openPool(ctx, ownerURL)
		if err != nil {
			return err
		}
		defer pool.Close()
		rec, err := audit.NewOutbox(audit.Config{Pool: pool}) // partitions are not audited: it records nothing
		if err != nil {
			return err
		}
		svc, err := core.New(core.Config{Pool: pool, Recorder: rec})
		if err != nil {
			return err
		}
		return svc.MaintainPartitions(ctx)
	}
	if err := pass(ctx); err != nil {
		return nil, fmt.Errorf("demo: partitions (as the owner): %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		every.Tick(lctx, time.Hour, func(ctx context.Context) {
			if err := pass(ctx); err != nil && ctx.Err() == nil {
				slog.ErrorContext(ctx, "demo: partitions (as the owner)", slog.String("error", err.Error()))
			}
		})
	}()
	return func() { cancel(); <-done }, nil
}
