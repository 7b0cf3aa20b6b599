package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// policyChannel is the PostgreSQL notification channel on which a policy change is announced
// to every Vigil process on the database, in the change's own transaction (so it is delivered
// when, and only if, the change commits). The payload is the change (policyDelta, JSON).
const policyChannel = "vigil_auth_policy"

// notifyMax bounds a notification's payload (PostgreSQL's limit is 8000 bytes): a larger
// change is announced by its version alone and the receivers reload.
const notifyMax = 7900

// policyDelta is one committed policy change, as applied to an Enforcer: the version it made
// and what it changed. Reload asks for a full reload instead (a change too large to announce,
// or one that is not described).
type policyDelta struct {
	Version int64       `json:"v"`
	Grants  []RoleGrant `json:"g,omitempty"` // grouping lines added
	Revoked []RoleGrant `json:"r,omitempty"` // grouping lines removed
	Added   []Rule      `json:"p,omitempty"` // policy lines added
	Removed []Rule      `json:"q,omitempty"` // policy lines removed
	Glass   *glassDelta `json:"b,omitempty"` // a break-glass grant opened
	Reload  bool        `json:"reload,omitempty"`
}

type glassDelta struct {
	ID      uuid.UUID `json:"id"`
	User    uuid.UUID `json:"user"`
	Patient uuid.UUID `json:"patient"`
	Expires time.Time `json:"expires"`
}

// notifyPolicy queues the announcement of d in tx (delivered on commit).
func notifyPolicy(ctx context.Context, tx pgx.Tx, d policyDelta) error {
	b, err := json.Marshal(d)
	if err == nil && len(b) > notifyMax {
		b, err = json.Marshal(policyDelta{Version: d.Version, Reload: true})
	}
	if err != nil {
		return fmt.Errorf("notify policy change: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", policyChannel, string(b)); err != nil {
		return fmt.Errorf("notify policy change: %w", err)
	}
	return nil
}

// apply makes a committed change effective: when it is the next version, incrementally (a
// grant change swaps in a new grant state, a policy line rebuilds the rules' enforcers; the
// cost of neither depends on the number of grants); when it is already loaded, not at all;
// otherwise (a version was missed, or the change asks for it) by a full reload.
func (e *Enforcer) apply(ctx context.Context, d policyDelta) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	cur := e.cur.Load()
	switch {
	case d.Version <= cur.version:
		return nil
	case d.Reload || d.Version != cur.version+1:
		return e.reloadLocked(ctx)
	}
	next := &snapshot{version: d.Version, rules: cur.rules, grants: cur.grants, glass: cur.glass, memo: cur.memo}
	if len(d.Added)+len(d.Removed) > 0 {
		lines := slices.DeleteFunc(slices.Clone(cur.rules.lines), func(l []string) bool {
			return slices.ContainsFunc(d.Removed, func(r Rule) bool { return slices.Equal(l, []string{r.Role, r.Object, r.Action, r.Scope}) })
		})
		for _, r := range d.Added {
			l := []string{r.Role, r.Object, r.Action, r.Scope}
			if !slices.ContainsFunc(lines, func(x []string) bool { return slices.Equal(x, l) }) {
				lines = append(lines, l)
			}
		}
		rs, err := e.buildRules(lines)
		if err != nil {
			return fmt.Errorf("auth: apply policy version %d: %w", d.Version, err)
		}
		next.rules, next.memo = rs, newMemo()
	}
	if len(d.Grants)+len(d.Revoked) > 0 {
		next.grants = cur.grants.with(d.Grants, d.Revoked)
		// Remembered answers are per role profile, valid whoever holds it; except those asked
		// per subject (no profiles, or a subject named like a role).
		for _, x := range slices.Concat(d.Grants, d.Revoked) {
			if next.grants.noProfile || next.grants.roleBit[x.Subject] != 0 {
				next.memo = newMemo()
			}
		}
	}
	if g := d.Glass; g != nil {
		next.glass = maps.Clone(cur.glass)
		sub := UserSubject(g.User)
		pm := maps.Clone(cur.glass[sub])
		if pm == nil {
			pm = map[uuid.UUID][]grantRef{}
		}
		pm[g.Patient] = append(slices.Clip(pm[g.Patient]), grantRef{g.ID, g.Expires})
		next.glass[sub] = pm
	}
	e.publish(next)
	e.applied.Add(1)
	e.signalDelta(d)
	return nil
}

// Follow keeps the enforcer current with the changes other processes make until ctx ends: it
// LISTENs for their announcements on a connection of its own and applies each at once (and
// passes the end of sessions, announced on vigil_auth_sessions, to WatchAccess), and
// calls Refresh every interval (default 5 s) as the fallback for a missed announcement. After
// its connection is lost it reconnects (with backoff) and reloads if the version moved
// meanwhile. A server runs it for as long as it serves; one-shot tools need not.
func (e *Enforcer) Follow(ctx context.Context, every time.Duration, log *slog.Logger) {
	if every <= 0 {
		every = 5 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := e.Refresh(ctx); err != nil && ctx.Err() == nil {
					log.WarnContext(ctx, "policy refresh failed", slog.String("error", err.Error()))
				}
			}
		}
	}()
	defer func() { <-done }()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := e.listenOnce(ctx, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		log.WarnContext(ctx, "auth: policy change listener lost its connection; retrying",
			slog.String("error", err.Error()), slog.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// listenOnce listens on one connection until it fails or ctx ends; listening calls back once
// LISTEN is in effect.
func (e *Enforcer) listenOnce(ctx context.Context, listening func()) error {
	conn, err := pgx.ConnectConfig(ctx, e.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+policyChannel+"; LISTEN "+sessionChannel); err != nil {
		return err
	}
	listening()
	// A change committed before LISTEN took effect was not announced to this connection.
	if err := e.Refresh(ctx); err != nil {
		return err
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == sessionChannel {
			// Sessions ended or a user disabled: the streams of the subject check again.
			e.accessChanged(!principalSubject(n.Payload), n.Payload)
			continue
		}
		var d policyDelta
		if json.Unmarshal([]byte(n.Payload), &d) != nil || d.Version <= 0 {
			err = e.Reload(ctx) // not understood: reload
		} else {
			err = e.apply(ctx, d)
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("apply policy change: %w", err)
		}
	}
}
