package rules

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/internal/pglisten"
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

// inboxBatch is how many inbox rows DrainInbox reads and evaluates at a time: the rows of one
// patient in a batch are evaluated together.
const inboxBatch = 2000

// Evaluated inbox rows are not deleted at once: they wait (pending) until a checkpoint writes
// the states that hold their effect, and are deleted in its transaction (persist) — the
// periodic Checkpoint (every minute in vigil serve) and Close, as for the replica's own
// patients, whose states are written only then. DrainInbox settles them itself only when
// inboxSettleRows are pending, or when the oldest has waited inboxSettleAge (no periodic
// checkpoint ran). (Settling every 10 s wrote the other replica's patients' states six times
// as often as the owner's own: docs/benchmarks.md, HA.)
const (
	inboxSettleRows = 10000
	inboxSettleAge  = 2 * time.Minute
)

// progressEvery is how often an owner announces its inbox progress when nothing changed;
// progressMin, how often at most when it did.
const (
	progressEvery = 5 * time.Second
	progressMin   = 200 * time.Millisecond
)

// inboxDrainGap is the shortest time between two drains woken by notifications: under load
// every forwarded upload notifies, and a drain per notification cost PostgreSQL more than the
// evaluation itself; the
// rows of the notifications within the gap are drained together at its end, ≤ 200 ms late
// (docs/benchmarks.md: HA — quiet re-measurement).
const inboxDrainGap = 200 * time.Millisecond

// wakeGap is the shortest time between two wake-ups a replica sends its owners (wakeOwners):
// under load every group commit forwards, and each notifying transaction wakes every
// listening connection of the database.
const wakeGap = 50 * time.Millisecond

// inboxChannel is the NOTIFY channel that wakes the owners when inbox rows commit.
const inboxChannel = "vigil_rules_inbox"

type leaseState struct {
	rebuilds  sync.WaitGroup // take-over rebuilds running (Close waits for them)
	mu        sync.Mutex
	forwarded map[uuid.UUID]forwardedUpload // uploads forwarded at commit, not to evaluate here
	drain     sync.Mutex                    // one DrainInbox at a time (RunInbox, take-overs)
	persist   sync.Mutex                    // one persist at a time (DrainInbox, Checkpoint)

	// Inbox rows evaluated here and not yet deleted (guarded by mu), by patient: they are
	// deleted with the checkpoint of the state they were evaluated on (persist), and not read
	// again meanwhile.
	pending      map[uuid.UUID]pendingRows
	pendingN     int
	pendingSince time.Time

	// The owner's side of the back-pressure (guarded by drain): the highest inbox row id
	// evaluated, and what was last announced.
	hw, annHW int64
	annMask   uint64
	annAt     time.Time

	// What the drains read (guarded by drain): snap is the snapshot (pg_snapshot, as text) of
	// the first read of the last drain that completed — the next drain reads only the rows of
	// transactions not visible in it, i.e. committed since; "" reads every row (the first
	// drain, take-overs). rescan (guarded by mu) asks the next drain to read every row again:
	// rows evaluated here were released without being deleted (their state dropped, or their
	// evaluation failed), so they are to be evaluated again.
	snap   string
	rescan bool

	bp backpressure

	wake struct { // wakeOwners
		mu        sync.Mutex
		last      time.Time // the last wake-up sent
		scheduled bool      // one is due at the end of the gap
	}

	drains atomic.Int64 // drains run (InboxStats)
}

// forwardedUpload is an upload whose observations Forward wrote to an owner's inbox.
type forwardedUpload struct {
	at      time.Time
	row     inboxRef
	counted bool // Pace has counted its row
}

type inboxRef struct {
	bucket int
	id     int64
}

// pendingRows are a patient's inbox rows evaluated on its state as loaded the gen-th time.
type pendingRows struct {
	gen uint64
	ids []int64
}

// backpressure is the forwarding side: the rows this replica forwarded that their owners have
// not announced as evaluated yet, by bucket (guarded by mu).
type backpressure struct {
	mu       sync.Mutex
	owner    map[int]string  // bucket → the replica that last announced it holds it
	progress map[int]int64   // bucket → that replica's highest evaluated inbox row id
	sent     map[int][]int64 // bucket → committed rows forwarded here, above progress
	changed  chan struct{}   // closed (and replaced) at every announcement noted

	waits, timeouts atomic.Int64
}

func (e *Engine) initLeases() {
	e.ls = &leaseState{forwarded: map[uuid.UUID]forwardedUpload{}, pending: map[uuid.UUID]pendingRows{}}
	e.ls.bp = backpressure{owner: map[int]string{}, progress: map[int]int64{}, sent: map[int][]int64{}, changed: make(chan struct{})}
	if e.cfg.Leases == nil {
		return
	}
	e.cfg.Leases.OnLose(e.forget)
	e.cfg.Leases.OnAcquire(func(ctx context.Context, buckets []int) {
		// This replica's own now: what it forwarded there before is not paced any more.
		e.ls.bp.mu.Lock()
		for _, b := range buckets {
			delete(e.ls.bp.sent, b)
		}
		e.ls.bp.mu.Unlock()
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
	// Their evaluated rows are not this replica's to settle: whoever holds the buckets now
	// (this replica again, should it take them back) reads them again.
	e.ls.mu.Lock()
	for pid, pr := range e.ls.pending {
		if in[BucketOf(pid)] {
			e.ls.pendingN -= len(pr.ids)
			delete(e.ls.pending, pid)
		}
	}
	e.ls.mu.Unlock()
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
	type sent struct {
		row inboxRef
		c   obs.Committed
	}
	var rows []sent
	var items []inboxItem
	for _, c := range batches {
		if len(c.Observations) == 0 || e.Owns(c.PatientID) {
			continue
		}
		items = append(items, inboxItem{pid: c.PatientID, kind: "observations", body: c.Observations})
		rows = append(rows, sent{c: c})
	}
	if len(rows) == 0 {
		return nil
	}
	ids, err := insertInbox(ctx, tx, items...)
	if err != nil {
		return err
	}
	for i := range rows {
		rows[i].row = inboxRef{BucketOf(rows[i].c.PatientID), ids[i]}
	}
	// The owners are woken after the commit (Pace), not in this transaction: a notifying
	// transaction holds PostgreSQL's notification queue lock through its commit, disk flush
	// included, so every group commit that forwarded would commit one at a time.
	now := time.Now()
	e.ls.mu.Lock()
	for _, r := range rows {
		for _, o := range r.c.Observations {
			e.ls.forwarded[o.UploadID] = forwardedUpload{at: now, row: r.row}
		}
	}
	// Uploads whose transaction failed never reach the hand-off: forget them after a while.
	if len(e.ls.forwarded) > 4096 {
		for u, f := range e.ls.forwarded {
			if now.Sub(f.at) > 10*time.Minute {
				delete(e.ls.forwarded, u)
			}
		}
	}
	e.ls.mu.Unlock()
	return nil
}

// inboxItem is one row for rules_inbox.
type inboxItem struct {
	pid  uuid.UUID
	kind string
	body any
}

// insertInbox writes the items to rules_inbox in one statement and returns their row ids, in
// the items' order.
func insertInbox(ctx context.Context, tx pgx.Tx, items ...inboxItem) ([]int64, error) {
	buckets := make([]int32, len(items))
	pids := make([]uuid.UUID, len(items))
	kinds := make([]string, len(items))
	bodies := make([]string, len(items))
	for i, it := range items {
		b, err := json.Marshal(it.body)
		if err != nil {
			return nil, fmt.Errorf("rules: inbox: %w", err)
		}
		buckets[i], pids[i], kinds[i], bodies[i] = int32(BucketOf(it.pid)), it.pid, it.kind, string(b)
	}
	// The rows are inserted in the order of the arrays, so their identities ascend in it.
	rows, err := tx.Query(ctx, `INSERT INTO rules_inbox (bucket, patient_id, kind, body)
		SELECT b, p, k, j::jsonb FROM unnest($1::int[], $2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY AS v(b, p, k, j, n) ORDER BY n
		RETURNING id`, buckets, pids, kinds, bodies)
	if err != nil {
		return nil, fmt.Errorf("rules: inbox: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("rules: inbox: %w", err)
	}
	if len(ids) != len(items) {
		return nil, fmt.Errorf("rules: inbox: %d rows written for %d", len(ids), len(items))
	}
	slices.Sort(ids)
	return ids, nil
}

// Pace, called by core after the commit of an upload group and before its hand-off to the
// rules (core.Pacer, in Publish), waits while the owner of a patient whose observations
// Forward sent to an inbox has more than Config.InboxLimit of this replica's rows left to
// evaluate, as the owners announce their progress — at most Config.InboxWait. It is the
// hand-off's back-pressure for the inbox: no transaction is open while it waits, and the
// committer it holds fills its queue, so that new uploads are refused with 503 backpressure
// and Retry-After (devices), as when this replica's own evaluation falls behind. Without
// Config.Leases it does nothing.
func (e *Engine) Pace(ctx context.Context, batches []obs.Committed) {
	if e.cfg.Leases == nil {
		return
	}
	rows := map[inboxRef]bool{}
	e.ls.mu.Lock()
	for _, c := range batches {
		for _, o := range c.Observations {
			f, ok := e.ls.forwarded[o.UploadID]
			if !ok || f.counted {
				continue
			}
			f.counted = true
			e.ls.forwarded[o.UploadID] = f
			rows[f.row] = true
		}
	}
	e.ls.mu.Unlock()
	if len(rows) == 0 {
		return
	}
	e.wakeOwners(ctx)
	bp := &e.ls.bp
	buckets := map[int]bool{}
	bp.mu.Lock()
	for r := range rows {
		if r.id > bp.progress[r.bucket] {
			bp.sent[r.bucket] = append(bp.sent[r.bucket], r.id)
		}
		buckets[r.bucket] = true
	}
	bp.mu.Unlock()
	var timeout <-chan time.Time
	for waited := false; ; waited = true {
		bp.mu.Lock()
		deep := false
		for b := range buckets {
			if e.cfg.Leases.Token(b) == 0 && e.inboxDepth(b) > e.cfg.InboxLimit {
				deep = true
				break
			}
		}
		changed := bp.changed
		bp.mu.Unlock()
		if !deep {
			return
		}
		if !waited {
			bp.waits.Add(1)
			t := time.NewTimer(e.cfg.InboxWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-timeout:
			bp.timeouts.Add(1)
			return
		case <-ctx.Done():
			return
		}
	}
}

// wakeOwners tells the owners (NOTIFY on the inbox channel, payload "w:<this replica>") that
// rows Forward wrote for them committed. It runs after the upload group's commit, in a
// transaction of its own: one that only notifies writes nothing to the WAL before its commit,
// so it does not wait for the disk and holds the notification queue lock only briefly. At
// most one is sent every wakeGap: a commit within the gap of the last wake-up is covered by
// one sent at the gap's end (the owners drain at most every inboxDrainGap anyway). A lost
// notification costs at most the owners' poll (the rows are durable and the drains read by
// commit, REQ-HA-045).
func (e *Engine) wakeOwners(ctx context.Context) {
	w := &e.ls.wake
	w.mu.Lock()
	if w.scheduled { // a wake-up after this commit is due already
		w.mu.Unlock()
		return
	}
	if d := wakeGap - time.Since(w.last); d > 0 {
		w.scheduled = true
		w.mu.Unlock()
		time.AfterFunc(d, func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			e.sendWake(ctx)
		})
		return
	}
	w.mu.Unlock()
	e.sendWake(ctx)
}

func (e *Engine) sendWake(ctx context.Context) {
	w := &e.ls.wake
	w.mu.Lock()
	w.scheduled, w.last = false, time.Now()
	w.mu.Unlock()
	if _, err := e.cfg.Pool.Exec(ctx, `SELECT pg_notify($1, $2)`, inboxChannel, "w:"+e.cfg.Leases.Replica()); err != nil && ctx.Err() == nil {
		e.cfg.Logger.DebugContext(ctx, "rules: inbox: notify (the owners poll)", slog.String("error", err.Error()))
	}
}

// inboxDepth is how many rows this replica forwarded that the owner of bucket has not
// announced as evaluated, over all the buckets that owner announced (bp.mu held).
func (e *Engine) inboxDepth(bucket int) int {
	bp := &e.ls.bp
	owner, ok := bp.owner[bucket]
	if !ok { // no announcement yet: this bucket alone
		return len(bp.sent[bucket])
	}
	n := 0
	for b, o := range bp.owner {
		if o == owner && e.cfg.Leases.Token(b) == 0 {
			n += len(bp.sent[b])
		}
	}
	return n
}

// noteProgress reads an owner's announcement ("p:<highest evaluated row id>:<buckets held, a
// hexadecimal bit mask>:<replica>") and wakes the Pace calls waiting.
func (e *Engine) noteProgress(payload string) {
	parts := strings.SplitN(payload, ":", 4)
	if len(parts) != 4 || parts[0] != "p" || e.cfg.Leases == nil || parts[3] == e.cfg.Leases.Replica() {
		return
	}
	hw, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return
	}
	mask, err := strconv.ParseUint(parts[2], 16, 64)
	if err != nil {
		return
	}
	owner := parts[3]
	bp := &e.ls.bp
	bp.mu.Lock()
	defer bp.mu.Unlock()
	for b := range Buckets {
		if mask&(1<<uint(b)) == 0 {
			if bp.owner[b] == owner {
				delete(bp.owner, b)
			}
			continue
		}
		bp.owner[b], bp.progress[b] = owner, hw
		keep := bp.sent[b][:0]
		for _, id := range bp.sent[b] {
			if id > hw {
				keep = append(keep, id)
			}
		}
		bp.sent[b] = keep
	}
	close(bp.changed)
	bp.changed = make(chan struct{})
}

// announce tells the other replicas (NOTIFY on the inbox channel) how far this replica has
// evaluated its inbox and which buckets it holds, when either changed or every progressEvery
// (ls.drain held).
func (e *Engine) announce(ctx context.Context) {
	var mask uint64
	for _, b := range e.cfg.Leases.Held() {
		mask |= 1 << uint(b)
	}
	ls := e.ls
	if since := time.Since(ls.annAt); since < progressMin || ls.hw == ls.annHW && mask == ls.annMask && since < progressEvery {
		return
	}
	payload := "p:" + strconv.FormatInt(ls.hw, 10) + ":" + strconv.FormatUint(mask, 16) + ":" + e.cfg.Leases.Replica()
	if _, err := e.cfg.Pool.Exec(ctx, `SELECT pg_notify($1, $2)`, inboxChannel, payload); err != nil {
		return // (announced again at the next drain)
	}
	ls.annHW, ls.annMask, ls.annAt = ls.hw, mask, time.Now()
}

// InboxStats are the inbox's counters on this replica.
type InboxStats struct {
	// Pending is how many inbox rows this replica evaluated whose deletion waits for the
	// checkpoint of their patients' state.
	Pending int
	// PaceWaits is how many Publish calls waited for an owner's inbox (Pace); PaceTimeouts,
	// how many of them gave up after Config.InboxWait.
	PaceWaits, PaceTimeouts int64
	// Drains is how many inbox drains ran (by notification, poll or take-over).
	Drains int64
}

// InboxStats returns the counters.
func (e *Engine) InboxStats() InboxStats {
	e.ls.mu.Lock()
	n := e.ls.pendingN
	e.ls.mu.Unlock()
	return InboxStats{Pending: n, PaceWaits: e.ls.bp.waits.Load(), PaceTimeouts: e.ls.bp.timeouts.Load(), Drains: e.ls.drains.Load()}
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
		if _, err := insertInbox(ctx, tx, inboxItem{pid, kind, body}); err != nil {
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

// DrainInbox evaluates the inbox rows of the buckets this replica holds, oldest first (not
// those it evaluated already, whose deletion waits for their patients' checkpoint), and
// returns how many it handled. A row whose patient is lost meanwhile stays for the new owner.
// The observation rows evaluated are deleted with the checkpoint of the states that hold
// their effect (persist): here, when inboxSettleRows are pending or the oldest has waited
// inboxSettleAge, else at the next Checkpoint. It announces its progress to the replicas that
// forward (Pace). It reads every row of the buckets (a take-over); the drains of RunInbox read
// only what committed since the last one. Without Config.Leases it does nothing.
func (e *Engine) DrainInbox(ctx context.Context) (int, error) { return e.drainInbox(ctx, true) }

// inboxRow is a rules_inbox row read by a drain.
type inboxRow struct {
	id   int64
	pid  uuid.UUID
	kind string
	body []byte
}

// drainInbox is DrainInbox; without full, only the rows of transactions that committed after
// the first read of the last drain are read (REQ-HA-045) — every row when there was none yet,
// or when rows evaluated here were released to be evaluated again (ls.rescan).
func (e *Engine) drainInbox(ctx context.Context, full bool) (int, error) {
	if e.cfg.Leases == nil {
		return 0, nil
	}
	e.ls.drain.Lock() // two drains at once would evaluate the same rows twice
	defer e.ls.drain.Unlock()
	defer e.announce(ctx)
	e.ls.drains.Add(1)
	e.ls.mu.Lock()
	if e.ls.rescan {
		full, e.ls.rescan = true, false
	}
	e.ls.mu.Unlock()
	prev := e.ls.snap
	if full {
		prev = ""
	}
	// On any failure the rows are read again by the next drain: from the same snapshot (not
	// advanced), or all of them (rescan).
	failed := func() {
		e.ls.mu.Lock()
		e.ls.rescan = e.ls.rescan || full
		e.ls.mu.Unlock()
	}
	var first string // the snapshot of this drain's first read: the next drain reads from it
	var after int64  // the batches after the first read rows above the last one read
	total := 0
	for {
		held := e.cfg.Leases.Held()
		if len(held) == 0 {
			return total, nil
		}
		snap, got, err := e.readInbox(ctx, held, prev, after)
		if err != nil {
			failed()
			return total, err
		}
		if first == "" {
			first = snap
		}
		n := len(got)
		if n > 0 {
			after = got[n-1].id
		}
		got = e.notPending(got)
		handled, err := e.evaluateInbox(ctx, got)
		total += handled
		if err != nil {
			failed()
			return total, err
		}
		if n < inboxBatch {
			e.ls.snap = first
			if e.settleDue() {
				return total, e.persist(ctx, false)
			}
			return total, nil
		}
	}
}

// readInbox reads up to inboxBatch rows of the buckets held with ids above after, in id order
// — only those of transactions not visible in the snapshot prev, unless prev is "" — and
// returns them with the snapshot the read saw.
func (e *Engine) readInbox(ctx context.Context, held []int, prev string, after int64) (string, []inboxRow, error) {
	var q string
	args := []any{held, inboxBatch, after}
	if prev == "" {
		q = `SELECT s.snap::text, r.id, r.patient_id, r.kind, r.body FROM (SELECT pg_current_snapshot() AS snap) s
			LEFT JOIN LATERAL (SELECT id, patient_id, kind, body FROM rules_inbox
				WHERE bucket = ANY($1) AND id > $3 ORDER BY id LIMIT $2) r ON true`
	} else {
		// Through the (bucket, xid) index: the rows of transactions at or after the oldest one
		// still running when prev was taken, less those that had committed by then.
		q = `SELECT s.snap::text, r.id, r.patient_id, r.kind, r.body FROM (SELECT pg_current_snapshot() AS snap) s
			LEFT JOIN LATERAL (SELECT id, patient_id, kind, body FROM rules_inbox
				WHERE bucket = ANY($1) AND id > $3 AND xid >= pg_snapshot_xmin($4::pg_snapshot)
				AND NOT pg_visible_in_snapshot(xid, $4::pg_snapshot) ORDER BY id LIMIT $2) r ON true`
		args = append(args, prev)
	}
	rows, err := e.cfg.Pool.Query(ctx, q, args...)
	if err != nil {
		return "", nil, fmt.Errorf("rules: inbox: %w", err)
	}
	defer rows.Close()
	var snap string
	var got []inboxRow
	for rows.Next() {
		var id *int64
		var r inboxRow
		var pid *uuid.UUID
		var kind *string
		if err := rows.Scan(&snap, &id, &pid, &kind, &r.body); err != nil {
			return "", nil, fmt.Errorf("rules: inbox: %w", err)
		}
		if id == nil { // no row: the snapshot alone
			continue
		}
		r.id, r.pid, r.kind = *id, *pid, *kind
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		return "", nil, fmt.Errorf("rules: inbox: %w", err)
	}
	return snap, got, nil
}

// notPending leaves out of got the rows evaluated here whose deletion waits for a checkpoint.
func (e *Engine) notPending(got []inboxRow) []inboxRow {
	if len(got) == 0 {
		return got
	}
	e.ls.mu.Lock()
	defer e.ls.mu.Unlock()
	if e.ls.pendingN == 0 {
		return got
	}
	lo, hi := got[0].id, got[len(got)-1].id
	seen := map[int64]bool{}
	for _, pr := range e.ls.pending {
		for _, id := range pr.ids {
			if id >= lo && id <= hi {
				seen[id] = true
			}
		}
	}
	if len(seen) == 0 {
		return got
	}
	keep := got[:0]
	for _, r := range got {
		if !seen[r.id] {
			keep = append(keep, r)
		}
	}
	return keep
}

// evaluateInbox evaluates rows read from the inbox: one evaluation per patient for its
// observation rows (up to its next settings or release row, which is applied in the rows'
// order), the patients spread over Config.InboxWorkers evaluating at once — a patient's rows
// always on the same one, in order — as the hand-off spreads a replica's own uploads. The
// observation rows evaluated wait for their patients' checkpoint (notePending); settings and
// release rows are deleted when applied. It returns how many rows it handled.
func (e *Engine) evaluateInbox(ctx context.Context, got []inboxRow) (int, error) {
	if len(got) == 0 {
		return 0, nil
	}
	type item struct {
		pid  uuid.UUID
		rows []int // indexes into got: one settings or release row, or observation rows
	}
	lanes := make([][]item, max(e.cfg.InboxWorkers, 1))
	laneOf := func(pid uuid.UUID) int { return int(binary.BigEndian.Uint32(pid[12:]) % uint32(len(lanes))) }
	open := map[uuid.UUID]int{} // patient → its observation item still open in its lane
	for k, r := range got {
		l := laneOf(r.pid)
		if r.kind == "observations" {
			if x, ok := open[r.pid]; ok {
				lanes[l][x].rows = append(lanes[l][x].rows, k)
				continue
			}
			open[r.pid] = len(lanes[l])
		} else {
			delete(open, r.pid)
		}
		lanes[l] = append(lanes[l], item{pid: r.pid, rows: []int{k}})
	}
	var mu sync.Mutex
	var done []int64
	var errs []error
	total := 0
	retry := false // a row to evaluate again (its evaluation failed)
	var wg sync.WaitGroup
	for _, lane := range lanes {
		if len(lane) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, it := range lane {
				r := got[it.rows[0]]
				if r.kind == "settings" || r.kind == "release" {
					var err error
					if r.kind == "settings" {
						err = e.reloadSettings(ctx, r.pid)
					} else {
						var b releaseBody
						if err = json.Unmarshal(r.body, &b); err == nil {
							err = e.releasePatient(ctx, b.By, r.pid, b.Reason)
						}
					}
					mu.Lock()
					if err == nil || !errors.Is(err, ErrNotOwner) {
						done = append(done, r.id) // (one that failed otherwise is logged, not retried forever)
					}
					if err != nil && !errors.Is(err, ErrNotOwner) {
						errs = append(errs, err)
					}
					mu.Unlock()
					continue
				}
				var batch []Observation
				ids := make([]int64, 0, len(it.rows))
				var errsHere []error
				for _, k := range it.rows {
					var os []Observation
					if err := json.Unmarshal(got[k].body, &os); err != nil {
						errsHere = append(errsHere, fmt.Errorf("rules: inbox row %d: %w", got[k].id, err))
					}
					batch = append(batch, os...)
					ids = append(ids, got[k].id)
				}
				sort.SliceStable(batch, func(a, b int) bool { return batch[a].EffectiveAt.Before(batch[b].EffectiveAt) })
				var gen uint64
				_, err := e.evaluateGen(ctx, it.pid, batch, &gen)
				if err == nil {
					e.notePending(it.pid, gen, ids)
				}
				mu.Lock()
				if err == nil {
					total += len(ids)
				} else if !errors.Is(err, ErrNotOwner) {
					errsHere, retry = append(errsHere, err), true
				}
				errs = append(errs, errsHere...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, r := range got {
		e.ls.hw = max(e.ls.hw, r.id)
	}
	if retry {
		e.ls.mu.Lock()
		e.ls.rescan = true
		e.ls.mu.Unlock()
	}
	if e.settleDue() {
		if err := e.persist(ctx, false); err != nil {
			errs = append(errs, err)
		}
	}
	e.announce(ctx)
	if len(done) > 0 {
		if _, err := e.cfg.Pool.Exec(ctx, `DELETE FROM rules_inbox WHERE id = ANY($1)`, done); err != nil {
			return total, fmt.Errorf("rules: inbox: %w", err)
		}
		total += len(done)
	}
	return total, errors.Join(errs...)
}

// RunInbox drains the inbox whenever another replica notifies it and at least every poll,
// until ctx ends. It listens on Config.Listener (the process's shared listener, run by the
// caller) or, without one, on a listener of its own. Without Config.Leases it returns at once.
func (e *Engine) RunInbox(ctx context.Context, poll time.Duration) {
	if e.cfg.Leases == nil {
		return
	}
	if poll <= 0 {
		poll = time.Second
	}
	// On the listener's goroutine only memory is touched: another replica's progress (Pace)
	// is noted, rows committed for the inbox and LISTEN (re)taking effect wake the drains.
	var full, due, stopped atomic.Bool
	wake := make(chan struct{}, 1)
	poke := func(flag *atomic.Bool) {
		flag.Store(true)
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	l := e.cfg.Listener
	own := l == nil
	if own {
		l = pglisten.New(e.cfg.Pool, e.cfg.Logger)
	}
	l.Handle(inboxChannel, pglisten.Handler{
		Notify: func(p string) {
			switch {
			case stopped.Load():
			case strings.HasPrefix(p, "p:"):
				e.noteProgress(p)
			case p == "w:"+e.cfg.Leases.Replica(): // this replica's own wake-up: nothing for it
			default:
				poke(&due)
			}
		},
		// Rows committed before LISTEN took effect were not announced here: a full drain.
		Listening: func() { poke(&full) },
	})
	defer stopped.Store(true)
	if own {
		lctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = l.Run(lctx) }()
		defer func() { stop(); <-done }()
	}
	e.listenInbox(ctx, poll, &full, &due, wake)
}

// listenInbox runs the drains RunInbox's listener asks for: one of every row each time LISTEN
// (re)takes effect, and one of what committed since the last drain (REQ-HA-045: exact, by
// commit) at most every inboxDrainGap when notified and at least every poll.
func (e *Engine) listenInbox(ctx context.Context, poll time.Duration, fullDue, notified *atomic.Bool, wake <-chan struct{}) {
	lastDrain := time.Now() // the last drain (each reads all that committed since the one before)
	t := time.NewTimer(poll)
	defer t.Stop()
	for due := false; ; {
		if notified.Swap(false) {
			due = true
		}
		now := time.Now()
		if full := fullDue.Swap(false); full || now.Sub(lastDrain) >= poll || due && now.Sub(lastDrain) >= inboxDrainGap {
			if _, err := e.drainInbox(ctx, full); err != nil && ctx.Err() == nil {
				e.cfg.Logger.WarnContext(ctx, "rules: inbox", slog.String("error", err.Error()))
			}
			lastDrain, due = time.Now(), false
		}
		wait := poll - time.Since(lastDrain)
		if due { // notified within inboxDrainGap of the last drain: drain when the gap ends
			wait = min(wait, inboxDrainGap-time.Since(lastDrain))
		}
		t.Reset(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-t.C:
		}
	}
}

// notePending records inbox rows evaluated on the patient's state as loaded the gen-th time.
// Rows evaluated on an earlier load that were not settled are released: that state is gone
// (rebuilt from the checkpoint and History), so they are read and evaluated again.
func (e *Engine) notePending(pid uuid.UUID, gen uint64, ids []int64) {
	e.ls.mu.Lock()
	defer e.ls.mu.Unlock()
	pr, ok := e.ls.pending[pid]
	if ok && pr.gen != gen {
		e.ls.pendingN -= len(pr.ids)
		pr = pendingRows{}
		e.ls.rescan = true // the released rows are read again
	}
	pr.gen = gen
	pr.ids = append(pr.ids, ids...)
	e.ls.pending[pid] = pr
	e.ls.pendingN += len(ids)
	if e.ls.pendingSince.IsZero() {
		e.ls.pendingSince = time.Now()
	}
}

// settleDue reports whether DrainInbox should settle the pending rows now.
func (e *Engine) settleDue() bool {
	e.ls.mu.Lock()
	defer e.ls.mu.Unlock()
	return e.ls.pendingN >= inboxSettleRows || e.ls.pendingN > 0 && time.Since(e.ls.pendingSince) >= inboxSettleAge
}

// persist writes, in one transaction, the state checkpoint of the patients evaluated since
// their last one — every such patient with all (Checkpoint), else only those with pending
// inbox rows (DrainInbox) — and deletes the inbox rows evaluated on those states: for each
// patient both or neither, so a crash never leaves rows deleted whose effect on the state was
// not stored (they are read and evaluated again; what the state already holds is skipped by
// its per-code marks, and an alarm raised was stored with the state that raised it). With
// leases, the buckets are fenced at once (Leases.FenceMany, a key-share lock on their lease rows);
// a patient whose bucket is lost, or whose state was dropped or rebuilt since its rows were
// evaluated, writes nothing of them and its rows are read again (by whoever holds the bucket).
// The patients are taken one at a time (never two locks held), in patient id order, and no
// patient lock is held while waiting for a row.
func (e *Engine) persist(ctx context.Context, all bool) error {
	e.ls.persist.Lock()
	defer e.ls.persist.Unlock()
	e.ls.mu.Lock()
	pend := make(map[uuid.UUID]pendingRows, len(e.ls.pending))
	for pid, pr := range e.ls.pending {
		pend[pid] = pr
	}
	e.ls.mu.Unlock()
	entries := map[uuid.UUID]*patientEntry{}
	if all {
		entries = e.entries()
	} else {
		for pid := range pend {
			if p := e.entry(pid); p != nil {
				entries[pid] = p
			}
		}
	}
	if len(entries) == 0 && len(pend) == 0 {
		return nil
	}
	pids := sortedIDs(entries)
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("rules: checkpoint: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var tokens map[int]int64
	if e.cfg.Leases != nil {
		seen := map[int]bool{}
		var buckets []int
		for _, pid := range pids {
			if b := BucketOf(pid); !seen[b] {
				seen[b] = true
				buckets = append(buckets, b)
			}
		}
		sort.Ints(buckets)
		if tokens, err = e.cfg.Leases.FenceMany(ctx, tx, buckets); err != nil {
			return err
		}
	}
	now := e.now()
	var del []int64
	var written []*patientEntry
	done := map[uuid.UUID]pendingRows{} // pending rows settled, or released to be read again
	for pid, pr := range pend {
		if entries[pid] == nil { // no state here any more: read them again
			done[pid] = pr
		}
	}
	restore := func() { // the transaction failed: what it would have checkpointed is dirty again
		for _, p := range written {
			p.mu.Lock()
			p.dirty = true
			p.mu.Unlock()
		}
	}
	for _, pid := range pids {
		p := entries[pid]
		pr, hasPend := pend[pid]
		p.mu.Lock()
		owned := p.loaded && (e.cfg.Leases == nil || p.token != 0 && tokens[BucketOf(pid)] == p.token)
		if !owned {
			if p.loaded && (p.dirty || hasPend) {
				p.loaded, p.st, p.dirty = false, nil, false // another replica's now (or never this one's)
			}
			p.mu.Unlock()
			if hasPend {
				done[pid] = pr
			}
			continue
		}
		if p.dirty {
			if err := writeState(ctx, tx, pid, p.st, now); err != nil {
				p.mu.Unlock()
				restore()
				return err
			}
			p.dirty = false
			written = append(written, p)
		}
		if hasPend {
			if pr.gen == p.gen { // else evaluated on a state since dropped: read them again
				del = append(del, pr.ids...)
			}
			done[pid] = pr
		}
		p.mu.Unlock()
	}
	released := 0
	for _, pr := range done {
		released += len(pr.ids)
	}
	if len(del) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM rules_inbox WHERE id = ANY($1)`, del); err != nil {
			restore()
			return fmt.Errorf("rules: inbox: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		restore()
		return fmt.Errorf("rules: checkpoint: commit: %w", err)
	}
	e.ls.mu.Lock()
	if len(del) < released {
		e.ls.rescan = true // rows released, not deleted: read them again
	}
	for pid, was := range done {
		cur, ok := e.ls.pending[pid]
		if !ok || cur.gen != was.gen || len(cur.ids) < len(was.ids) {
			continue // replaced meanwhile (notePending)
		}
		e.ls.pendingN -= len(was.ids)
		if len(cur.ids) == len(was.ids) {
			delete(e.ls.pending, pid)
		} else { // evaluated more meanwhile: those wait for the next checkpoint
			cur.ids = cur.ids[len(was.ids):]
			e.ls.pending[pid] = cur
		}
	}
	if e.ls.pendingN == 0 {
		e.ls.pendingSince = time.Time{}
	} else {
		e.ls.pendingSince = time.Now()
	}
	e.ls.mu.Unlock()
	return nil
}

// settingsChanged, inside the transaction that changes a patient's rule settings (SpO2
// scale, documented oxygen) on a replica that does not own the patient, tells the owner to
// read them again when the change commits.
func (e *Engine) settingsChanged(ctx context.Context, tx pgx.Tx, pid uuid.UUID) error {
	if e.cfg.Leases == nil || e.Owns(pid) {
		return nil
	}
	if _, err := insertInbox(ctx, tx, inboxItem{pid, "settings", struct{}{}}); err != nil {
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
