package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/internal/pglisten"
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

// maxFollowQueue bounds the announcements waiting for Follow (a shared listener receives them
// even while Follow is not running): beyond it they are replaced by one full reload, which
// includes them all.
const maxFollowQueue = 10000

// followState is what the listener hands Follow, in the order received: policy changes
// (their payloads) and the points where LISTEN (re)took effect (refresh).
type followState struct {
	mu     sync.Mutex
	queue  []followItem
	wake   chan struct{}
	shared bool // handlers registered on the process's shared listener (Config.Listener)
}

type followItem struct {
	refresh bool   // LISTEN (re)took effect: what changed before may have been missed
	reload  bool   // too many announcements waited: reload
	payload string // a policy change (policyDelta, JSON)
}

// listenOn registers the enforcer's handlers on l. On the listener's goroutine, the end of
// sessions is passed to WatchAccess at once (memory only); policy changes and the points
// where LISTEN (re)took effect are queued, in order, for Follow, which applies them with
// database reads of its own.
func (e *Enforcer) listenOn(l *pglisten.Listener) {
	e.follow.mu.Lock()
	if e.follow.wake == nil {
		e.follow.wake = make(chan struct{}, 1)
	}
	e.follow.mu.Unlock()
	l.Handle(policyChannel, pglisten.Handler{
		Notify:    func(p string) { e.enqueue(followItem{payload: p}) },
		Listening: func() { e.enqueue(followItem{refresh: true}) },
	})
	l.Handle(sessionChannel, pglisten.Handler{Notify: func(p string) {
		// Sessions ended or a user disabled: the streams of the subject check again.
		e.accessChanged(!principalSubject(p), p)
	}})
}

func (e *Enforcer) enqueue(it followItem) {
	f := &e.follow
	f.mu.Lock()
	if len(f.queue) >= maxFollowQueue {
		f.queue = append(f.queue[:0], followItem{reload: true})
	}
	f.queue = append(f.queue, it)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Follow keeps the enforcer current with the changes other processes make until ctx ends: it
// LISTENs for their announcements — on the process's shared listener (Config.Listener, run by
// the caller) or on a connection of its own — and applies each in the order announced (and
// passes the end of sessions, announced on vigil_auth_sessions, to WatchAccess), and calls
// Refresh every interval (default 5 s) as the fallback for a missed announcement. Each time
// LISTEN (re)takes effect (after a lost connection, with backoff) it calls Refresh, which
// reloads if the version moved meanwhile. A server runs it for as long as it serves; one-shot
// tools need not. One Follow at a time.
func (e *Enforcer) Follow(ctx context.Context, every time.Duration, log *slog.Logger) {
	if every <= 0 {
		every = 5 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	e.follow.mu.Lock()
	shared := e.follow.shared
	e.follow.mu.Unlock()
	if !shared {
		l := pglisten.New(e.pool, log)
		e.listenOn(l)
		lctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = l.Run(lctx) }()
		defer func() { stop(); <-done }()
	}
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
		case <-e.follow.wake:
			e.follow.mu.Lock()
			items := e.follow.queue
			e.follow.queue = nil
			e.follow.mu.Unlock()
			for _, it := range items {
				if err := e.applyAnnounced(ctx, it); err != nil && ctx.Err() == nil {
					// The next Refresh reloads: the version it missed is behind the database's.
					log.WarnContext(ctx, "auth: policy change not applied", slog.String("error", err.Error()))
				}
			}
		}
	}
}

// applyAnnounced applies one item of Follow's queue.
func (e *Enforcer) applyAnnounced(ctx context.Context, it followItem) error {
	switch {
	case it.refresh:
		// A change committed before LISTEN took effect was not announced to this process.
		return e.Refresh(ctx)
	case it.reload:
		return e.Reload(ctx)
	}
	var d policyDelta
	if json.Unmarshal([]byte(it.payload), &d) != nil || d.Version <= 0 {
		return e.Reload(ctx) // not understood: reload
	}
	if err := e.apply(ctx, d); err != nil {
		return fmt.Errorf("apply policy change: %w", err)
	}
	return nil
}
