package chain

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/leaf"
)

// Kinds of verification findings. Each names what an auditor must look at.
const (
	FindingPending            = "pending"                  // an event waits longer than the grace period to be logged
	FindingModified           = "modified"                 // an event row no longer hashes to its logged leaf, or its plaintext no longer matches its commitments
	FindingDeleted            = "deleted"                  // a logged event's row is gone
	FindingInserted           = "inserted"                 // a row claims a batch that does not contain it (added behind the outbox's back)
	FindingTruncated          = "truncated"                // the outbox lost every logged event (TRUNCATE or mass DELETE)
	FindingBatchModified      = "batch_modified"           // a batch row disagrees with itself or with its leaf in the log
	FindingBatchDeleted       = "batch_deleted"            // the log holds a batch leaf the database has no row for
	FindingBatchNotInLog      = "batch_not_in_log"         // a batch claims a leaf index under the checkpoint that holds something else
	FindingCheckpointInvalid  = "checkpoint_invalid"       // a stored checkpoint's signature or content is wrong
	FindingFork               = "fork"                     // checkpoints or the live log are not append-only consistent
	FindingIncident           = "incident"                 // an unresolved incident of the audit chain
	FindingLogUnavailable     = "log_unavailable"          // the log could not be read, so inclusion was not checked
	FindingUnauthenticated    = "unauthenticated"          // an event row has no valid authentication tag of a writer session: forged, back-dated, renumbered or altered
	FindingSequenceGap        = "sequence_gap"             // a writer session attested an event (its transaction committed) whose row is gone: an action whose event was deleted
	FindingErasedEarly        = "erased_early"             // an event's identifiers, payload and salt were erased before its retention age
	FindingAuthUnchecked      = "authentication_unchecked" // verify ran without the key ring, so event authentication was not checked
	FindingWitness            = "witness"                  // a witness holds a checkpoint this log is smaller than or inconsistent with, or a required cosignature is missing
	maxListedPending          = 1000
	defaultPendingGracePeriod = time.Minute
)

// Finding is one problem verification found.
type Finding struct {
	Kind      string `json:"kind"`
	EventID   string `json:"event_id,omitempty"`
	BatchID   string `json:"batch_id,omitempty"`
	LeafIndex *int64 `json:"leaf_index,omitempty"`
	Detail    string `json:"detail"`
}

// PendingEvent is an event not yet covered by a checkpoint.
type PendingEvent struct {
	ID    string        `json:"id"`
	State string        `json:"state"` // "outbox" (not sealed), "sealed" (not integrated), "integrated" (after the latest checkpoint)
	Age   time.Duration `json:"age_ns"`
	// Stopped: the writer stopped in order after recording it (its final attestation covers
	// it) before it was checkpointed; it is logged at the next start. Not a finding.
	Stopped bool `json:"stopped,omitempty"`
}

// CheckpointSummary identifies the checkpoint a report was verified against.
type CheckpointSummary struct {
	ID        int64     `json:"id"`
	Size      uint64    `json:"size"`
	Root      string    `json:"root"`
	CreatedAt time.Time `json:"created_at"`
}

// Report is the result of Verify. OK is true when there is no finding.
type Report struct {
	OK            bool               `json:"ok"`
	CheckedAt     time.Time          `json:"checked_at"`
	Checkpoint    *CheckpointSummary `json:"checkpoint,omitempty"`
	Checkpoints   int                `json:"checkpoints"`
	LogSize       uint64             `json:"log_size"`
	Batches       int                `json:"batches"`
	Events        int64              `json:"events"`         // event rows checked
	ProvenEvents  int64              `json:"proven_events"`  // events proven included under the checkpoint
	PendingEvents int64              `json:"pending_events"` // events not yet under a checkpoint
	DomainRows    int64              `json:"domain_rows"`    // domain rows cross-checked against their events
	// ObservationsChecked is the stored observations read by a Deep verify (counted against
	// their upload's event, and their values against its digest).
	ObservationsChecked int64 `json:"observations_checked,omitempty"`
	// Incremental is set when the run started from VerifyConfig.Since: it checked what came
	// after that state's checkpoint and event, not the whole trail, and not the domain rows.
	Incremental bool `json:"incremental,omitempty"`
	// State is what the next incremental run starts from (set when there is no finding and
	// the log was read up to a checkpoint).
	State    *VerifyState   `json:"state,omitempty"`
	Pending  []PendingEvent `json:"pending,omitempty"`
	Findings []Finding      `json:"findings"`
}

// VerifyConfig configures Verify.
type VerifyConfig struct {
	Pool *pgxpool.Pool // required
	// Log is the live log. When nil, inclusion in the log cannot be checked and the report
	// carries a log_unavailable finding.
	Log *Log
	// VerifierKey is the note verifier key of the checkpoint signer. Required.
	VerifierKey string
	// Origin is the expected checkpoint origin. Required.
	Origin string
	// PendingGrace is how long an event may wait to be logged before it is a finding.
	// Default 1 minute.
	PendingGrace time.Duration
	// Keys checks the events' authentication tags (the key ring's encrypter unwraps the
	// session keys). When nil, authentication is not checked and the report carries an
	// authentication_unchecked finding.
	Keys *audit.SessionKeys
	// RetentionMinAge is the youngest an event may be when its identifiers, payload and salt
	// are erased; an erased event younger than that is an erased_early finding. Default
	// DefaultRetentionMinAge.
	RetentionMinAge time.Duration
	// NoDomain skips the cross-check of domain rows against the events (FindingUnaudited,
	// FindingDomainMismatch). Default false: they are checked.
	NoDomain bool
	// Deep also reads every stored observation: counted against its upload's event, and its
	// values against the digest the event committed to (audit/obsdigest); a changed value is
	// a domain_mismatch naming the observation.
	Deep bool
	// Witnesses are required: the latest checkpoint must carry each one's cosignature (once
	// older than PendingGrace), and a witness with a URL is asked whether it cosigned a
	// larger checkpoint of this log (a truncated or rolled-back log). Default none.
	Witnesses []WitnessEndpoint
	// Since, when set, makes the run incremental (see VerifyState): only what came after
	// the state is checked, and the domain rows are not cross-checked. Default nil: a full
	// verification.
	Since *VerifyState
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// DefaultRetentionMinAge is the default retention age of audit events: six years (HIPAA
// §164.316(b)(2)(i)).
const DefaultRetentionMinAge = 6 * 365 * 24 * time.Hour

// Verify checks the audit trail end to end: every stored checkpoint's signature and the
// consistency between them and with the live log; every log leaf up to the latest checkpoint
// against that checkpoint's root; every batch against its leaf; every event row against the
// hash its batch committed to. It returns a report naming each finding; an error means the
// verification itself could not run (database unreachable), never that the trail is bad.
func Verify(ctx context.Context, cfg VerifyConfig) (*Report, error) {
	if cfg.Pool == nil || cfg.VerifierKey == "" || cfg.Origin == "" {
		return nil, errors.New("audit verify: Pool, VerifierKey and Origin are required")
	}
	if cfg.PendingGrace <= 0 {
		cfg.PendingGrace = defaultPendingGracePeriod
	}
	if cfg.RetentionMinAge <= 0 {
		cfg.RetentionMinAge = DefaultRetentionMinAge
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// All database reads see one snapshot, so the shipper sealing batches meanwhile cannot
	// make an event appear to claim a batch that verify did not see.
	tx, err := cfg.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("audit verify: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	v := &verifier{cfg: cfg, q: tx, rep: &Report{CheckedAt: cfg.Now().UTC(), Findings: []Finding{}}, sessions: map[uuid.UUID]*sessionSeen{}, domain: newDomainEvents()}
	if cfg.Since != nil {
		if cfg.Since.Origin != cfg.Origin {
			return nil, fmt.Errorf("audit verify: the state is of log %q, not %q", cfg.Since.Origin, cfg.Origin)
		}
		v.rep.Incremental = true
		v.seedSessions()
	}
	if err := v.run(ctx); err != nil {
		return nil, fmt.Errorf("audit verify: %w", err)
	}
	r := v.rep
	sort.SliceStable(r.Findings, func(i, j int) bool { return r.Findings[i].Kind < r.Findings[j].Kind })
	r.OK = len(r.Findings) == 0
	if r.OK {
		r.State = v.state()
	}
	return r, nil
}

type verifier struct {
	cfg VerifyConfig
	q   querier // one read-only snapshot of the database
	rep *Report
	cp  *Checkpoint // latest valid checkpoint

	sessions map[uuid.UUID]*sessionSeen // what each writer session wrote and attested
	overdue  []overdue                  // events pending longer than the grace period
	domain   *domainEvents              // what the domain cross-check needs of the events

	base   uint64         // the first log leaf read (the state's size in an incremental run)
	rng    *compact.Range // the log's leaves [0, checkpoint size), once proven
	maxSeq int64          // the highest event row read
	abort  bool           // the incremental run's starting checkpoint is gone: nothing else is checked
}

func (v *verifier) find(f Finding) { v.rep.Findings = append(v.rep.Findings, f) }

func (v *verifier) run(ctx context.Context) error {
	if err := v.checkpoints(ctx); err != nil {
		return err
	}
	if v.abort {
		return nil
	}
	logLeaves, err := v.logLeaves(ctx)
	if err != nil {
		return err
	}
	expected, err := v.batches(ctx, logLeaves)
	if err != nil {
		return err
	}
	if err := v.events(ctx, expected); err != nil {
		return err
	}
	v.gaps()
	v.overdueFindings()
	if err := v.checkWitnesses(ctx); err != nil {
		return err
	}
	if !v.cfg.NoDomain && v.cfg.Since == nil {
		if err := v.crossCheck(ctx); err != nil {
			return err
		}
	}
	if v.cfg.Keys == nil {
		v.find(Finding{Kind: FindingAuthUnchecked, Detail: "verify ran without the key ring: events were not checked for forgery (give it the key ring)"})
	}
	n, err := UnresolvedIncidents(ctx, v.q)
	if err != nil {
		return err
	}
	if n > 0 {
		v.find(Finding{Kind: FindingIncident, Detail: fmt.Sprintf("%d unresolved audit chain incident(s) in audit_incidents", n)})
	}
	return nil
}

// checkpoints verifies every stored checkpoint and the consistency proofs between them.
func (v *verifier) checkpoints(ctx context.Context) error {
	tail := "ORDER BY id"
	if v.cfg.Since != nil {
		tail = fmt.Sprintf("WHERE id >= %d ORDER BY id", v.cfg.Since.CheckpointID)
	}
	cps, err := loadCheckpoints(ctx, v.q, tail)
	if err != nil {
		return err
	}
	if v.cfg.Since != nil && !v.sinceCheckpoint(cps) {
		v.abort = true
		return nil
	}
	v.rep.Checkpoints = len(cps)
	var prev *Checkpoint
	for i := range cps {
		cp := &cps[i]
		origin, size, root, err := OpenCheckpoint(cp.Note, v.cfg.VerifierKey)
		switch {
		case err != nil:
			v.find(Finding{Kind: FindingCheckpointInvalid, Detail: fmt.Sprintf("checkpoint %d: %v", cp.ID, err)})
			continue
		case origin != v.cfg.Origin || size != cp.Size || root != cp.Root:
			v.find(Finding{Kind: FindingCheckpointInvalid, Detail: fmt.Sprintf("checkpoint %d: signed note (origin %q, size %d) disagrees with its row (size %d)", cp.ID, origin, size, cp.Size)})
			continue
		}
		if prev != nil {
			if err := verifyConsistency(prev.Size, cp.Size, cp.ConsistencyProof, prev.Root, cp.Root); err != nil || cp.PrevSize != prev.Size {
				v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("checkpoint %d (size %d) is not proven consistent with checkpoint %d (size %d): %v",
					cp.ID, cp.Size, prev.ID, prev.Size, err)})
			}
		}
		prev = cp
	}
	if prev != nil {
		v.cp = prev
		v.rep.Checkpoint = &CheckpointSummary{ID: prev.ID, Size: prev.Size, Root: hex.EncodeToString(prev.Root[:]), CreatedAt: prev.CreatedAt.UTC()}
	}
	return nil
}

func verifyConsistency(from, to uint64, p [][]byte, fromRoot, toRoot leaf.Hash) error {
	if from > to {
		return fmt.Errorf("size shrank from %d to %d", from, to)
	}
	if from == 0 {
		return nil
	}
	return proof.VerifyConsistency(rfc6962.DefaultHasher, from, to, p, fromRoot[:], toRoot[:])
}

// logLeaves reads the live log's leaves up to the latest checkpoint and proves them against
// its root, and proves the live log consistent with the checkpoint. It returns nil when the
// log is unavailable (reported as a finding).
func (v *verifier) logLeaves(ctx context.Context) ([][]byte, error) {
	if v.cp == nil {
		return nil, nil
	}
	if v.cfg.Log == nil {
		v.find(Finding{Kind: FindingLogUnavailable, Detail: "no log to check inclusion against"})
		return nil, nil
	}
	root, err := v.cfg.Log.LatestRoot(ctx)
	if err != nil {
		v.find(Finding{Kind: FindingLogUnavailable, Detail: err.Error()})
		return nil, nil
	}
	v.rep.LogSize = root.Size
	if root.Size < v.cp.Size {
		v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("live log (size %d) is smaller than checkpoint %d (size %d)", root.Size, v.cp.ID, v.cp.Size)})
		return nil, nil
	}
	if root.Size > v.cp.Size {
		p, err := v.cfg.Log.ConsistencyProof(ctx, v.cp.Size, root.Size)
		if err != nil {
			v.find(Finding{Kind: FindingLogUnavailable, Detail: err.Error()})
			return nil, nil
		}
		if err := verifyConsistency(v.cp.Size, root.Size, p, v.cp.Root, root.Hash); err != nil {
			v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("live log (size %d) is not consistent with checkpoint %d: %v", root.Size, v.cp.ID, err)})
		}
	} else if root.Hash != v.cp.Root {
		v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("live log root differs from checkpoint %d at the same size %d", v.cp.ID, root.Size)})
	}
	var hashes [][]byte
	if s := v.cfg.Since; s != nil {
		v.base, hashes = s.Size, s.Range
		if v.cp.Size < s.Size {
			v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("checkpoint %d (size %d) is smaller than the size %d verified on %s", v.cp.ID, v.cp.Size, s.Size, s.VerifiedAt.Format(time.RFC3339))})
			return nil, nil
		}
	}
	leaves, err := v.cfg.Log.Leaves(ctx, int64(v.base), int64(v.cp.Size-v.base))
	if err != nil {
		v.find(Finding{Kind: FindingLogUnavailable, Detail: err.Error()})
		return nil, nil
	}
	if uint64(len(leaves)) != v.cp.Size-v.base {
		v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("log returned %d leaves for checkpoint size %d", len(leaves), v.cp.Size)})
		return nil, nil
	}
	rng, err := leafRange(v.base, hashes, leaves)
	if err != nil {
		v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("the remembered compact range of size %d does not extend: %v", v.base, err)})
		return nil, nil
	}
	got, err := rangeRoot(rng)
	if err != nil {
		return nil, err
	}
	v.rng = rng
	if got != v.cp.Root {
		v.rng = nil
		v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("the log's leaves do not hash to checkpoint %d's root", v.cp.ID)})
		return nil, nil
	}
	return leaves, nil
}

// expectedEvent is what a batch committed to for one event.
type expectedEvent struct {
	batch  uuid.UUID
	index  int
	hash   leaf.Hash
	proven bool // the batch is under the latest checkpoint and matches its log leaf
	inLog  bool // the batch has a leaf index (maybe after the latest checkpoint)
	seen   bool
	sealed time.Time
}

// batches checks every batch row against itself and against the log leaf at its index, and
// every log leaf against a batch row. It returns what each logged event must hash to.
func (v *verifier) batches(ctx context.Context, logLeaves [][]byte) (map[uuid.UUID]*expectedEvent, error) {
	where, args := "", []any{}
	if v.cfg.Since != nil {
		where, args = "WHERE leaf_index IS NULL OR leaf_index >= $1", []any{int64(v.cfg.Since.Size)}
	}
	rows, err := v.q.Query(ctx, `SELECT id, sealed_at, count, root, event_ids, event_hashes, leaf_value, leaf_index
		FROM audit_batches `+where+` ORDER BY seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("read batches: %w", err)
	}
	defer rows.Close()
	type batchRow struct {
		id       uuid.UUID
		sealed   time.Time
		count    int
		ids      []byte
		hashes   []leaf.Hash
		value    []byte
		idx      *int64
		inLog    *int64 // the index where the log holds this batch's leaf
		mismatch bool   // the log holds this batch id with a different leaf
	}
	var list []*batchRow
	byID := make(map[uuid.UUID]*batchRow)
	for rows.Next() {
		var (
			b      batchRow
			root   []byte
			hs     []byte
			sealed time.Time
		)
		if err := rows.Scan(&b.id, &sealed, &b.count, &root, &b.ids, &hs, &b.value, &b.idx); err != nil {
			return nil, fmt.Errorf("read batch: %w", err)
		}
		b.sealed = sealed
		v.rep.Batches++
		bid := b.id.String()
		if len(b.ids) != 16*b.count || len(hs) != leaf.HashSize*b.count {
			v.find(Finding{Kind: FindingBatchModified, BatchID: bid, LeafIndex: b.idx, Detail: "event lists do not match the batch's count"})
			continue
		}
		b.hashes = make([]leaf.Hash, b.count)
		for i := range b.hashes {
			copy(b.hashes[i][:], hs[i*leaf.HashSize:])
		}
		r, err := leaf.RootOf(b.hashes)
		var rootH leaf.Hash
		copy(rootH[:], root)
		want := leaf.Batch{ID: b.id, Count: uint32(b.count), Root: r}
		if err != nil || r != rootH || !bytes.Equal(want.Encode(), b.value) {
			v.find(Finding{Kind: FindingBatchModified, BatchID: bid, LeafIndex: b.idx, Detail: "batch root or leaf value does not match its event hashes"})
			continue
		}
		list = append(list, &b)
		byID[b.id] = &b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read batches: %w", err)
	}
	// Every leaf under the checkpoint must be a batch the database holds, unchanged. (A batch
	// whose integration the shipper has not stored yet is matched by its id.)
	for i, val := range logLeaves {
		li := int64(v.base) + int64(i)
		bl, err := leaf.DecodeBatch(val)
		if err != nil {
			v.find(Finding{Kind: FindingBatchDeleted, LeafIndex: &li, Detail: "the log holds a leaf that is no Vigil batch"})
			continue
		}
		b := byID[uuid.UUID(bl.ID)]
		switch {
		case b == nil:
			bid := uuid.UUID(bl.ID).String()
			v.find(Finding{Kind: FindingBatchDeleted, BatchID: bid, LeafIndex: &li,
				Detail: fmt.Sprintf("the log holds batch %s of %d events, but the database has no valid row for it", bid, bl.Count)})
		case !bytes.Equal(b.value, val):
			b.mismatch = true
		default:
			b.inLog = &li
		}
	}
	expected := make(map[uuid.UUID]*expectedEvent)
	for _, b := range list {
		proven := false
		bid := b.id.String()
		underCP := b.idx != nil && v.cp != nil && uint64(*b.idx) < v.cp.Size
		switch {
		case logLeaves == nil: // log unavailable (reported) or no checkpoint yet
		case b.mismatch:
			v.find(Finding{Kind: FindingBatchModified, BatchID: bid, LeafIndex: b.idx, Detail: "the batch row differs from its leaf in the log"})
			continue
		case b.inLog != nil && b.idx != nil && *b.idx != *b.inLog:
			v.find(Finding{Kind: FindingBatchNotInLog, BatchID: bid, LeafIndex: b.idx,
				Detail: fmt.Sprintf("the row says leaf %d, the log holds the batch at %d", *b.idx, *b.inLog)})
			continue
		case b.inLog != nil:
			proven = true
		case underCP:
			v.find(Finding{Kind: FindingBatchNotInLog, BatchID: bid, LeafIndex: b.idx, Detail: "the log holds a different leaf at this batch's index"})
			continue
		}
		for i := range b.count {
			var eid uuid.UUID
			copy(eid[:], b.ids[i*16:])
			if prev := expected[eid]; prev != nil {
				v.find(Finding{Kind: FindingModified, EventID: eid.String(), BatchID: bid,
					Detail: fmt.Sprintf("the event is logged twice, in batch %s and %s (its row was reset to pending)", prev.batch, bid)})
			}
			expected[eid] = &expectedEvent{batch: b.id, index: i, hash: b.hashes[i], proven: proven,
				inLog: b.idx != nil || b.inLog != nil, sealed: b.sealed}
		}
	}
	return expected, nil
}

// events checks every event row against what its batch committed to, and lists the events
// not yet under a checkpoint.
func (v *verifier) events(ctx context.Context, expected map[uuid.UUID]*expectedEvent) error {
	now := v.cfg.Now()
	if v.cfg.Keys != nil {
		if err := v.cfg.Keys.Load(ctx, v.q); err != nil {
			return err
		}
	}
	where, args := "", []any{}
	if s := v.cfg.Since; s != nil {
		// After the remembered row; and whatever is not logged yet or in a batch after the
		// remembered size (a transaction that committed late has a lower seq).
		where, args = `WHERE seq > $1 OR batch_id IS NULL OR batch_id IN
			(SELECT id FROM audit_batches WHERE leaf_index IS NULL OR leaf_index >= $2)`, []any{s.EventSeq, int64(s.Size)}
	}
	rows, err := v.q.Query(ctx, `SELECT `+eventColumns+` FROM audit_events `+where+` ORDER BY seq`, args...)
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		ev, err := scanStoredEvent(rows)
		if err != nil {
			return fmt.Errorf("read event: %w", err)
		}
		v.rep.Events++
		v.maxSeq = max(v.maxSeq, ev.Seq)
		id := ev.ID.String()
		exp := expected[ev.ID]
		h, herr := ev.LeafHash()
		cerr := ev.CheckCommitments()
		if exp != nil {
			exp.seen = true
		}
		authentic, err := v.authenticate(ctx, &ev)
		if err != nil {
			return err
		}
		if !authentic && exp == nil && ev.BatchID == nil {
			// Forged and never logged: reported as unauthenticated, not as pending.
			continue
		}
		if authentic {
			v.domain.note(&ev)
		}
		if authentic && ev.Salt == nil && now.Sub(ev.RecordedAt) < v.cfg.RetentionMinAge {
			v.find(Finding{Kind: FindingErasedEarly, EventID: id,
				Detail: fmt.Sprintf("identifiers, payload and salt erased %s after the event was recorded; the retention age is %s",
					now.Sub(ev.RecordedAt).Round(time.Second), v.cfg.RetentionMinAge)})
		}
		switch {
		case exp == nil && ev.BatchID != nil:
			v.find(Finding{Kind: FindingInserted, EventID: id, BatchID: ev.BatchID.String(),
				Detail: "the row claims a batch that does not contain it"})
			continue
		case exp == nil:
			v.pending(PendingEvent{ID: id, State: "outbox", Age: max(now.Sub(ev.RecordedAt), 0)}, &ev)
			continue
		}
		switch {
		case ev.BatchID == nil || *ev.BatchID != exp.batch || ev.BatchIndex == nil || int(*ev.BatchIndex) != exp.index:
			v.find(Finding{Kind: FindingModified, EventID: id, BatchID: exp.batch.String(), Detail: "the row's batch assignment was changed"})
		case herr != nil || h != exp.hash:
			v.find(Finding{Kind: FindingModified, EventID: id, BatchID: exp.batch.String(), Detail: "the row no longer hashes to the leaf its batch committed to"})
		case cerr != nil:
			v.find(Finding{Kind: FindingModified, EventID: id, BatchID: exp.batch.String(), Detail: cerr.Error()})
		case exp.proven:
			v.rep.ProvenEvents++
		case exp.inLog:
			v.pending(PendingEvent{ID: id, State: "integrated", Age: max(now.Sub(ev.RecordedAt), 0)}, &ev)
		default:
			v.pending(PendingEvent{ID: id, State: "sealed", Age: max(now.Sub(ev.RecordedAt), 0)}, &ev)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	var missing []Finding
	for id, exp := range expected {
		if !exp.seen {
			missing = append(missing, Finding{Kind: FindingDeleted, EventID: id.String(), BatchID: exp.batch.String(),
				Detail: fmt.Sprintf("event %d of batch %s has no row", exp.index, exp.batch)})
		}
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i].EventID < missing[j].EventID })
	if len(missing) > 0 && len(missing) == len(expected) {
		v.find(Finding{Kind: FindingTruncated, Detail: fmt.Sprintf("all %d logged events are missing from the outbox", len(missing))})
	}
	v.rep.Findings = append(v.rep.Findings, missing...)
	return nil
}

// sessionSeen is what verify saw of one writer session: the counters of its authentic
// rows and what it attested.
type sessionSeen struct {
	seqs       []uint64
	through    uint64
	rolledBack map[uint64]bool
	finalSeq   uint64 // the counter of the session's final attestation (it stopped in order)
	from       uint64 // counters up to this were checked by an earlier run (incremental)
}

// authenticate checks an event row's authentication tag (when verify has the key ring) and
// notes its counter and, for an attestation, what it attests. It reports a finding and
// returns false for a row without a valid tag.
func (v *verifier) authenticate(ctx context.Context, ev *StoredEvent) (bool, error) {
	if v.cfg.Keys == nil {
		return true, nil
	}
	l := ev.Leaf()
	err := v.cfg.Keys.Check(ctx, nil, &l, ev.AuthMAC)
	if errors.Is(err, audit.ErrUnauthenticated) {
		v.find(Finding{Kind: FindingUnauthenticated, EventID: ev.ID.String(),
			Detail: fmt.Sprintf("%s %s at %s: %v (not written by Vigil: forged, back-dated or altered in the database)",
				ev.Action, ev.ObjectType, ev.Time.Format(time.RFC3339), err)})
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ss := v.sessions[ev.Session]
	if ss == nil {
		ss = &sessionSeen{rolledBack: map[uint64]bool{}}
		v.sessions[ev.Session] = ss
	}
	ss.seqs = append(ss.seqs, uint64(ev.SessionSeq))
	if ev.Action == audit.ActionSessionAttested && ev.ObjectType == audit.ObjectSession && ev.Payload != nil {
		var a audit.Attestation
		if err := json.Unmarshal(ev.Payload, &a); err == nil {
			ss.through = max(ss.through, a.Through)
			if a.Final {
				ss.finalSeq = max(ss.finalSeq, uint64(ev.SessionSeq))
			}
			for _, n := range a.RolledBack {
				ss.rolledBack[n] = true
			}
		}
	}
	return true, nil
}

// gaps reports every counter a session attested (its transaction committed) that has no
// authentic row: an action whose event row was deleted before it reached the log.
func (v *verifier) gaps() {
	ids := make([]uuid.UUID, 0, len(v.sessions))
	for id := range v.sessions {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return bytes.Compare(ids[i][:], ids[j][:]) < 0 })
	for _, id := range ids {
		ss := v.sessions[id]
		sort.Slice(ss.seqs, func(i, j int) bool { return ss.seqs[i] < ss.seqs[j] })
		k := 0
		reported := 0
		for n := ss.from + 1; n <= ss.through; n++ {
			for k < len(ss.seqs) && ss.seqs[k] < n {
				k++
			}
			if (k < len(ss.seqs) && ss.seqs[k] == n) || ss.rolledBack[n] {
				continue
			}
			reported++
			if reported <= maxListedPending {
				v.find(Finding{Kind: FindingSequenceGap, Detail: fmt.Sprintf("writer session %s: event #%d was committed (attested) but its row is gone: an action whose audit event was deleted", id, n)})
			}
		}
	}
}

func (v *verifier) pending(p PendingEvent, ev *StoredEvent) {
	v.rep.PendingEvents++
	if p.Age > v.cfg.PendingGrace {
		v.overdue = append(v.overdue, overdue{p: p, session: ev.Session, seq: uint64(ev.SessionSeq)})
		return
	}
	v.listPending(p)
}

func (v *verifier) listPending(p PendingEvent) {
	if len(v.rep.Pending) < maxListedPending {
		v.rep.Pending = append(v.rep.Pending, p)
	}
}

// overdue is an event pending longer than the grace period.
type overdue struct {
	p       PendingEvent
	session uuid.UUID
	seq     uint64
}

// overdueFindings reports the events pending longer than the grace period, except those of a
// writer that stopped in order (its final attestation covers them, and is authentic): the
// server was stopped before they were checkpointed, which is not tampering.
func (v *verifier) overdueFindings() {
	for _, o := range v.overdue {
		ss := v.sessions[o.session]
		if v.cfg.Keys != nil && ss != nil && ss.finalSeq != 0 && o.seq <= ss.finalSeq {
			o.p.Stopped = true
			v.listPending(o.p)
			continue
		}
		v.find(Finding{Kind: FindingPending, EventID: o.p.ID, Detail: fmt.Sprintf("not in the log after %s (%s)", o.p.Age.Round(time.Second), o.p.State)})
		v.listPending(o.p)
	}
}

// WriteText writes the report for humans.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Checkpoint != nil {
		fmt.Fprintf(&b, "checkpoint %d: size %d, root %s (%s)\n", r.Checkpoint.ID, r.Checkpoint.Size, r.Checkpoint.Root, r.Checkpoint.CreatedAt.Format(time.RFC3339))
	} else {
		fmt.Fprintf(&b, "no checkpoint issued yet\n")
	}
	if r.Incremental {
		b.WriteString("incremental: only what came after the remembered state was checked (no domain cross-check; --full re-reads everything)\n")
	}
	fmt.Fprintf(&b, "checkpoints verified: %d; log size %d; batches %d\n", r.Checkpoints, r.LogSize, r.Batches)
	fmt.Fprintf(&b, "events: %d rows, %d proven in the log, %d pending\n", r.Events, r.ProvenEvents, r.PendingEvents)
	for _, p := range r.Pending {
		if p.Age > time.Second {
			stopped := ""
			if p.Stopped {
				stopped = " (its writer stopped in order; logged at the next start)"
			}
			fmt.Fprintf(&b, "  pending %s: %s for %s%s\n", p.ID, p.State, p.Age.Round(time.Millisecond), stopped)
		}
	}
	if r.OK {
		b.WriteString("OK: the audit trail is complete and untouched\n")
	} else {
		fmt.Fprintf(&b, "FAILED: %d finding(s)\n", len(r.Findings))
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "  %-18s", f.Kind)
			if f.EventID != "" {
				fmt.Fprintf(&b, " event %s", f.EventID)
			}
			if f.BatchID != "" {
				fmt.Fprintf(&b, " batch %s", f.BatchID)
			}
			if f.LeafIndex != nil {
				fmt.Fprintf(&b, " leaf %d", *f.LeafIndex)
			}
			fmt.Fprintf(&b, ": %s\n", f.Detail)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
