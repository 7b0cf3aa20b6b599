package auth

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// sessionChannel is the PostgreSQL notification channel on which the end of a person's
// sessions (signed out, signed out everywhere, timed out, the user disabled) is announced to
// every Vigil process on the database, in the ending transaction (delivered when, and only
// if, it commits). The payload is the policy subject whose access changed (user:<id>).
const sessionChannel = "vigil_auth_sessions"

// notifySessions queues, in tx, the announcement that user's sessions (some or all) ended.
func notifySessions(ctx context.Context, tx pgx.Tx, user uuid.UUID) error {
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", sessionChannel, UserSubject(user)); err != nil {
		return fmt.Errorf("notify session end: %w", err)
	}
	return nil
}

// accessWatch tells the holders of live access (open streams) of a change that may end it,
// in this process: a session ended or a user disabled (announced on sessionChannel), or a
// policy change applied (a grant revoked, a rule removed, a reload). A watcher is told of the
// changes to its subject and of those to everyone; the signal only says "check again now".
type accessWatch struct {
	mu   sync.Mutex
	subs map[*accessWatcher]struct{}
}

type accessWatcher struct {
	subject string
	c       chan struct{}
}

// WatchAccess returns a channel that receives (coalesced, never blocking the sender) when the
// access of subject (a principal's policy subject, user:<id> or token:<id>) may have
// changed in any process on the database — its sessions ended, the user disabled, a grant
// of it revoked, a policy line removed — and the function that stops the watch. The changes
// of other processes arrive only while Follow runs. The receiver re-checks the principal
// (authenticates its credentials again, asks Allow again): the signal carries no decision.
func (e *Enforcer) WatchAccess(subject string) (<-chan struct{}, func()) {
	w := &accessWatcher{subject: subject, c: make(chan struct{}, 1)}
	e.watch.mu.Lock()
	if e.watch.subs == nil {
		e.watch.subs = map[*accessWatcher]struct{}{}
	}
	e.watch.subs[w] = struct{}{}
	e.watch.mu.Unlock()
	var once sync.Once
	return w.c, func() {
		once.Do(func() {
			e.watch.mu.Lock()
			delete(e.watch.subs, w)
			e.watch.mu.Unlock()
		})
	}
}

// accessChanged signals the watchers of subjects (every watcher when all).
func (e *Enforcer) accessChanged(all bool, subjects ...string) {
	e.watch.mu.Lock()
	defer e.watch.mu.Unlock()
	for w := range e.watch.subs {
		if all || containsString(subjects, w.subject) {
			select {
			case w.c <- struct{}{}:
			default:
			}
		}
	}
}

func containsString(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// principalSubject reports whether s names a principal (user:… or token:…), not a role.
func principalSubject(s string) bool {
	return strings.HasPrefix(s, "user:") || strings.HasPrefix(s, "token:")
}

// signalDelta tells the watchers a policy change applied may concern: the subjects whose
// grants were revoked; everyone when a rule was removed, a grant of a role (not a principal)
// was revoked, or the change was not described (reload). Grants added and break-glass grants
// opened take nothing away and signal no one.
func (e *Enforcer) signalDelta(d policyDelta) {
	if d.Reload || len(d.Removed) > 0 {
		e.accessChanged(true)
		return
	}
	var subs []string
	for _, g := range d.Revoked {
		if !principalSubject(g.Subject) {
			e.accessChanged(true)
			return
		}
		subs = append(subs, g.Subject)
	}
	if len(subs) > 0 {
		e.accessChanged(false, subs...)
	}
}
