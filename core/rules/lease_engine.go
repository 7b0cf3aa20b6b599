package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/obs"
)

// This file is the engine's side of several replicas on one database (Config.Leases): which
// patients this replica evaluates, the fencing of its writes, and the inbox through which the
// other replicas hand it the observations they committed for its patients.
//
//   - A patient is evaluated only by the replica holding its bucket (BucketOf). Its state is
//     loaded under the bucket's fencing token and written only while that token holds
//     (Leases.Fence, in the same transaction), so a replica that lost a bucket writes nothing
//     after the new owner read the state.
//   - An upload committed on a replica that does not own the patient carries its
//     observations to the owner in rules_inbox, in the upload's own transaction (Forward),
//     so that a crash right after the commit loses nothing; NOTIFY vigil_rules_inbox wakes
//     the owner, which also polls every InboxPoll.
//   - A bucket taken over (its replica lost or leaving) has its patients' state rebuilt from
//     their checkpoints and the observations stored after them, at once; its inbox is
//     drained by the new owner.

// inboxBatch is how many inbox rows DrainInbox reads, evaluates and settles at a time: the
// rows of one patient in a batch are evaluated together and its state written once, in the
// one transaction that settles the batch.
const inboxBatch = 2000

// inboxChannel is the NOTIFY channel that wakes the owners when inbox rows commit.
const inboxChannel = "vigil_rules_inbox"

type leaseState struct {
	rebuilds  sync.WaitGroup // take-over rebuilds running (Close waits for them)
	mu        sync.Mutex
	forwarded map[uuid.UUID]time.Time // uploads forwarded at commit, not to evaluate here
	drain     sync.Mutex              // one DrainInbox at a time (RunInbox, take-overs)
}

func (e *Engine) initLeases() {
	e.ls = &leaseState{forwarded: map[uuid.UUID]time.Time{}}
	if e.cfg.Leases == nil {
		return
	}
	e.cfg.Leases.OnLose(e.forget)
	e.cfg.Leases.OnAcquire(func(ctx context.Context, buckets []int) {
		// In the background: a long rebuild must not delay the renewal of this replica's
		// leases. Until it reaches a patient, the patient's first evaluation rebuilds it
		// (its state is loaded under the new token either way).
		e.ls.rebuilds.Add(1)
		go func() { defer e.ls.rebuilds.Done(); e.takeOver(ctx, buckets) }()
	})
}

// waitRebuilds waits for the take-over rebuilds in progress (Close; tests).
func (e *Engine) waitRebuilds() { e.ls.rebuilds.Wait() }

// leaseToken is the token under which the patient's state may be loaded and written: the
// bucket's fencing token, 0 when this replica does not own the patient, and 1 without leases.
func (e *Engine) leaseToken(pid uuid.UUID) int64 {
	if e.cfg.Leases == nil {
		return 1
	}
	return e.cfg.Leases.Token(BucketOf(pid))
}

// Owns reports whether this replica evaluates the patient (always, without Config.Leases).
func (e *Engine) Owns(pid uuid.UUID) bool { return e.leaseToken(pid) != 0 }

// fence checks inside tx that the patient's state, loaded under token, may still be written.
func (e *Engine) fence(ctx context.Context, tx pgx.Tx, pid uuid.UUID, token int64) error {
	if e.cfg.Leases == nil {
		return nil
	}
	return e.cfg.Leases.Fence(ctx, tx, BucketOf(pid), token)
}

// forget drops the in-memory state of the patients of buckets this replica no longer holds;
// should it take them again, they are rebuilt from the database.
func (e *Engine) forget(buckets []int) {
	in := map[int]bool{}
	for _, b := range buckets {
		in[b] = true
	}
	for id, p := range e.entries() {
		if !in[BucketOf(id)] {
			continue
		}
		p.mu.Lock()
		p.loaded, p.st, p.dirty, p.token = false, nil, false, 0
		p.mu.Unlock()
	}
}

// takeOver rebuilds, at once, the state of every checkpointed patient of the buckets just
// taken (checkpoint, then the observations stored after it: what the previous owner had not
// evaluated, or not checkpointed, is evaluated now), then drains their inbox.
func (e *Engine) takeOver(ctx context.Context, buckets []int) {
	e.forget(buckets)
	in := map[int]bool{}
	for _, b := range buckets {
		in[b] = true
	}
	rows, err := e.cfg.Pool.Query(ctx, `SELECT patient_id FROM rules_patient_state`)
	if err == nil {
		var ids []uuid.UUID
		ids, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		for _, id := range ids {
			if !in[BucketOf(id)] {
				continue
			}
			p, _, lerr := e.lockPatient(ctx, id)
			if lerr != nil {
				err = errors.Join(err, lerr)
				continue
			}
			p.mu.Unlock()
		}
	}
	if err != nil {
		e.cfg.Logger.WarnContext(ctx, "rules: take-over: rebuilding state", slog.String("error", err.Error()))
	}
	if _, err := e.DrainInbox(ctx); err != nil {
		e.cfg.Logger.WarnContext(ctx, "rules: take-over: inbox", slog.String("error", err.Error()))
	}
}

// Forward, called by core inside the transaction that stores an upload (core.Forwarder),
// writes to rules_inbox the observations of the patients this replica does not own, for
// their owner, and notifies it on commit. The observations of those uploads are then not
// evaluated here when they reach the hand-off. Without Config.Leases it does nothing.
func (e *Engine) Forward(ctx context.Context, tx pgx.Tx, batches []obs.Committed) error {
	if e.cfg.Leases == nil {
		return nil
	}
	var n int
	var uploads []uuid.UUID
	for _, c := range batches {
		if len(c.Observations) == 0 || e.Owns(c.PatientID) {
			continue
		}
		if err := insertInbox(ctx, tx, c.PatientID, "observations", c.Observations); err != nil {
			return err
		}
		n++
		for _, o := range c.Observations {
			uploads = append(uploads, o.UploadID)
		}
	}
	if n == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, inboxChannel); err != nil {
		return fmt.Errorf("rules: forward: notify: %w", err)
	}
	now := time.Now()
	e.ls.mu.Lock()
	for _, u := range uploads {
		e.ls.forwarded[u] = now
	}
	// Uploads whose transaction failed never reach the hand-off: forget them after a while.
	if len(e.ls.forwarded) > 4096 {
		for u, t := range e.ls.forwarded {
			if now.Sub(t) > 10*time.Minute {
				delete(e.ls.forwarded, u)
			}
		}
	}
	e.ls.mu.Unlock()
	return nil
}

func insertInbox(ctx context.Context, tx pgx.Tx, pid uuid.UUID, kind string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("rules: inbox: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO rules_inbox (bucket, patient_id, kind, body) VALUES ($1,$2,$3,$4)`,
		BucketOf(pid), pid, kind, b); err != nil {
		return fmt.Errorf("rules: inbox: %w", err)
	}
	return nil
}

// route is the hand-off's consumer with leases: the observations of an owned patient are
// evaluated here; those of another replica's patient go to its owner through the inbox
// (unless Forward already sent them in the upload's transaction).
func (e *Engine) route(ctx context.Context, c obs.Committed) error {
	if e.cfg.Leases == nil {
		_, err := e.evaluate(ctx, c.PatientID, c.Observations)
		return err
	}
	// Leave out what was forwarded at commit.
	e.ls.mu.Lock()
	keep := c.Observations[:0:0]
	for _, o := range c.Observations {
		if _, ok := e.ls.forwarded[o.UploadID]; ok {
			continue
		}
		keep = append(keep, o)
	}
	for _, o := range c.Observations {
		delete(e.ls.forwarded, o.UploadID)
	}
	e.ls.mu.Unlock()
	if len(keep) == 0 {
		return nil
	}
	if e.Owns(c.PatientID) {
		_, err := e.evaluate(ctx, c.PatientID, keep)
		if !errors.Is(err, ErrNotOwner) {
			return err
		}
		// The bucket was lost while these waited: hand them to the new owner.
	}
	return e.sendInbox(ctx, c.PatientID, "observations", keep)
}

func (e *Engine) sendInbox(ctx context.Context, pid uuid.UUID, kind string, body any) error {
	return pgx.BeginFunc(ctx, e.cfg.Pool, func(tx pgx.Tx) error {
		if err := insertInbox(ctx, tx, pid, kind, body); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, inboxChannel)
		return err
	})
}

// releaseBody is an inbox row of kind "release".
type releaseBody struct {
	By     audit.Event `json:"by"`
	Reason string      `json:"reason"`
}

// DrainInbox evaluates the inbox rows of the buckets this replica holds, oldest first, and
// deletes them; it returns how many it handled. A row whose patient is lost meanwhile stays
// for the new owner. Without Config.Leases it does nothing.
func (e *Engine) DrainInbox(ctx context.Context) (int, error) {
	if e.cfg.Leases == nil {
		return 0, nil
	}
	e.ls.drain.Lock() // two drains at once would evaluate and settle the same rows twice
	defer e.ls.drain.Unlock()
	total := 0
	for {
		held := e.cfg.Leases.Held()
		if len(held) == 0 {
			return total, nil
		}
		rows, err := e.cfg.Pool.Query(ctx, `SELECT id, patient_id, kind, body FROM rules_inbox WHERE bucket = ANY($1) ORDER BY id LIMIT $2`, held, inboxBatch)
		if err != nil {
			return total, fmt.Errorf("rules: inbox: %w", err)
		}
		type row struct {
			id   int64
			pid  uuid.UUID
			kind string
			body []byte
		}
		var got []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.pid, &r.kind, &r.body); err != nil {
				rows.Close()
				return total, fmt.Errorf("rules: inbox: %w", err)
			}
			got = append(got, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return total, fmt.Errorf("rules: inbox: %w", err)
		}
		if len(got) == 0 {
			return total, nil
		}
		// One evaluation per patient for its observation rows of the batch (up to its next
		// settings or release row, which is applied in the rows' order); the rows of every
		// patient evaluated are settled together, in one transaction, after the batch
		// (settleInbox).
		type item struct {
			pid  uuid.UUID
			rows []int // indexes into got: one settings or release row, or observation rows
		}
		var items []item
		open := map[uuid.UUID]int{} // patient → its observation item still open
		for k, r := range got {
			if r.kind == "observations" {
				if x, ok := open[r.pid]; ok {
					items[x].rows = append(items[x].rows, k)
					continue
				}
				open[r.pid] = len(items)
			} else {
				delete(open, r.pid)
			}
			items = append(items, item{pid: r.pid, rows: []int{k}})
		}
		var done []int64
		var errs []error
		evaluated := map[uuid.UUID][]int64{}
		for _, it := range items {
			r := got[it.rows[0]]
			if r.kind == "settings" {
				err := e.reloadSettings(ctx, r.pid)
				if err == nil || !errors.Is(err, ErrNotOwner) {
					done = append(done, r.id)
				}
				if err != nil && !errors.Is(err, ErrNotOwner) {
					errs = append(errs, err)
				}
				continue
			}
			if r.kind == "release" {
				var b releaseBody
				err := json.Unmarshal(r.body, &b)
				if err == nil {
					err = e.releasePatient(ctx, b.By, r.pid, b.Reason)
				}
				if err == nil || !errors.Is(err, ErrNotOwner) {
					done = append(done, r.id) // (a release that failed otherwise is logged, not retried forever)
				}
				if err != nil && !errors.Is(err, ErrNotOwner) {
					errs = append(errs, err)
				}
				continue
			}
			var batch []Observation
			ids := make([]int64, 0, len(it.rows))
			for _, k := range it.rows {
				var os []Observation
				if err := json.Unmarshal(got[k].body, &os); err != nil {
					errs = append(errs, fmt.Errorf("rules: inbox row %d: %w", got[k].id, err))
				}
				batch = append(batch, os...)
				ids = append(ids, got[k].id)
			}
			sort.SliceStable(batch, func(a, b int) bool { return batch[a].EffectiveAt.Before(batch[b].EffectiveAt) })
			_, err := e.evaluate(ctx, it.pid, batch)
			if err == nil {
				evaluated[it.pid] = append(evaluated[it.pid], ids...)
			}
			if err != nil && !errors.Is(err, ErrNotOwner) {
				errs = append(errs, err)
			}
		}
		n, err := e.settleInbox(ctx, evaluated)
		total += n
		if err != nil {
			errs = append(errs, err)
		}
		if len(done) > 0 {
			if _, err := e.cfg.Pool.Exec(ctx, `DELETE FROM rules_inbox WHERE id = ANY($1)`, done); err != nil {
				return total, fmt.Errorf("rules: inbox: %w", err)
			}
			total += len(done)
		}
		if err := errors.Join(errs...); err != nil {
			return total, err
		}
		if len(got) < inboxBatch {
			return total, nil
		}
	}
}

// RunInbox drains the inbox whenever another replica notifies it and at least every poll,
// until ctx ends. Without Config.Leases it returns at once.
func (e *Engine) RunInbox(ctx context.Context, poll time.Duration) {
	if e.cfg.Leases == nil {
		return
	}
	if poll <= 0 {
		poll = time.Second
	}
	for ctx.Err() == nil {
		err := e.listenInbox(ctx, poll)
		if err != nil && ctx.Err() == nil {
			e.cfg.Logger.WarnContext(ctx, "rules: inbox listener", slog.String("error", err.Error()))
			select {
			case <-ctx.Done():
			case <-time.After(poll):
			}
		}
	}
}

func (e *Engine) listenInbox(ctx context.Context, poll time.Duration) error {
	conn, err := e.cfg.Pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "UNLISTEN *")
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+inboxChannel); err != nil {
		return err
	}
	for {
		if _, err := e.DrainInbox(ctx); err != nil && ctx.Err() == nil {
			e.cfg.Logger.WarnContext(ctx, "rules: inbox", slog.String("error", err.Error()))
		}
		wctx, cancel := context.WithTimeout(ctx, poll)
		_, err := conn.Conn().WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
}

// fenceCheckpoint is fence for the checkpoint transaction, which writes many patients: a
// failed check must not abort it, so the share lock is taken in a savepoint.
func (e *Engine) fenceCheckpoint(ctx context.Context, tx pgx.Tx, pid uuid.UUID, token int64) error {
	if e.cfg.Leases == nil {
		return nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if err := e.fence(ctx, sp, pid, token); err != nil {
		_ = sp.Rollback(ctx)
		return err
	}
	return sp.Commit(ctx)
}

// settleInbox deletes the inbox rows of the patients just evaluated (ids by patient), with
// their state checkpoints, in one transaction: for each patient either both or neither, so a
// crash never leaves rows deleted whose effect on the state was not stored (they are evaluated
// again from the inbox; what the state already holds is skipped by its per-code marks, and an
// alarm raised was stored with the state that raised it). The buckets of the batch are fenced
// first, at once (Leases.FenceMany); a patient whose bucket is lost writes nothing and keeps
// its rows for the new owner, without stopping the others. As in checkpoint, the patients are
// then taken one at a time (never two locks held), in patient id order, and no patient lock
// is held while waiting for a row. It returns how many rows it deleted.
func (e *Engine) settleInbox(ctx context.Context, ids map[uuid.UUID][]int64) (int, error) {
	if len(ids) == 0 || e.cfg.Leases == nil {
		return 0, nil
	}
	pids := sortedIDs(ids)
	seen := map[int]bool{}
	var buckets []int
	for _, pid := range pids {
		if b := BucketOf(pid); !seen[b] {
			seen[b] = true
			buckets = append(buckets, b)
		}
	}
	sort.Ints(buckets)
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("rules: inbox: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	tokens, err := e.cfg.Leases.FenceMany(ctx, tx, buckets)
	if err != nil {
		return 0, err
	}
	now := e.now()
	var del []int64
	var written []*patientEntry
	restore := func() { // the transaction failed: what it would have checkpointed is dirty again
		for _, p := range written {
			p.mu.Lock()
			p.dirty = true
			p.mu.Unlock()
		}
	}
	for _, pid := range pids {
		p := e.entry(pid)
		if p == nil {
			continue
		}
		p.mu.Lock()
		if !p.loaded || p.token == 0 {
			// Dropped since its evaluation (lost, or a failed write): its rows stay, to be
			// evaluated again on the state rebuilt from the database.
			p.mu.Unlock()
			continue
		}
		if tokens[BucketOf(pid)] != p.token {
			p.loaded, p.st, p.dirty = false, nil, false // another replica's now: its rows stay
			p.mu.Unlock()
			continue
		}
		if p.dirty {
			if err := writeState(ctx, tx, pid, p.st, now); err != nil {
				p.mu.Unlock()
				restore()
				return 0, err
			}
			p.dirty = false
			written = append(written, p)
		}
		p.mu.Unlock()
		del = append(del, ids[pid]...)
	}
	var n int64
	if len(del) > 0 {
		tag, err := tx.Exec(ctx, `DELETE FROM rules_inbox WHERE id = ANY($1)`, del)
		if err != nil {
			restore()
			return 0, fmt.Errorf("rules: inbox: %w", err)
		}
		n = tag.RowsAffected()
	}
	if err := tx.Commit(ctx); err != nil {
		restore()
		return 0, fmt.Errorf("rules: inbox: commit: %w", err)
	}
	return int(n), nil
}

// settingsChanged, inside the transaction that changes a patient's rule settings (SpO2
// scale, documented oxygen) on a replica that does not own the patient, tells the owner to
// read them again when the change commits.
func (e *Engine) settingsChanged(ctx context.Context, tx pgx.Tx, pid uuid.UUID) error {
	if e.cfg.Leases == nil || e.Owns(pid) {
		return nil
	}
	if err := insertInbox(ctx, tx, pid, "settings", struct{}{}); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, inboxChannel)
	return err
}

// reloadSettings reads the patient's settings into its state (an inbox row of kind "settings").
func (e *Engine) reloadSettings(ctx context.Context, pid uuid.UUID) error {
	p, _, err := e.lockPatient(ctx, pid)
	if err != nil {
		return err
	}
	defer p.mu.Unlock()
	if p.token == 0 {
		return ErrNotOwner
	}
	if err := e.loadSettings(ctx, pid, p.st); err != nil {
		return err
	}
	p.dirty = true
	return nil
}
