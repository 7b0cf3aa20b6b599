package chain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// ErrEventNotFound is returned for an event id that is not in the outbox.
var ErrEventNotFound = errors.New("audit event not found")

// ErrInvalidQuery is returned for a malformed filter or cursor.
var ErrInvalidQuery = errors.New("invalid audit query")

// EventFilter selects events. Empty fields do not filter.
type EventFilter struct {
	ActorKind  string
	ActorID    string
	Action     string // exact, or a prefix ending in ".*" (e.g. "upload.*")
	ObjectType string
	ObjectID   string
	From, To   time.Time // From ≤ time < To
	Cursor     string    // from EventPage.NextCursor
	Limit      int       // default 100, at most 1000
}

// EventPage is one page of events, newest first.
type EventPage struct {
	Events     []StoredEvent `json:"events"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// Events lists events matching f, newest first, with cursor paging. Payloads are left out
// (fetch a single event for them).
func (s *Service) Events(ctx context.Context, f EventFilter) (EventPage, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		return EventPage{}, fmt.Errorf("%w: limit %d exceeds 1000", ErrInvalidQuery, f.Limit)
	}
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if f.ActorKind != "" {
		add("actor_kind = ?", f.ActorKind)
	}
	if f.ActorID != "" {
		add("actor_id = ?", f.ActorID)
	}
	if prefix, ok := strings.CutSuffix(f.Action, ".*"); ok {
		add("starts_with(action, ?)", prefix+".")
	} else if f.Action != "" {
		add("action = ?", f.Action)
	}
	if f.ObjectType != "" {
		add("object_type = ?", f.ObjectType)
	}
	if f.ObjectID != "" {
		add("object_id = ?", f.ObjectID)
	}
	if !f.From.IsZero() {
		add("occurred_at >= ?", f.From)
	}
	if !f.To.IsZero() {
		add("occurred_at < ?", f.To)
	}
	if f.Cursor != "" {
		seq, err := strconv.ParseInt(f.Cursor, 10, 64)
		if err != nil || seq <= 0 {
			return EventPage{}, fmt.Errorf("%w: cursor %q", ErrInvalidQuery, f.Cursor)
		}
		add("seq < ?", seq)
	}
	q := `SELECT ` + eventColumns + ` FROM audit_events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, f.Limit+1)
	q += " ORDER BY seq DESC LIMIT $" + strconv.Itoa(len(args))
	rows, err := s.cfg.Pool.Query(ctx, q, args...)
	if err != nil {
		return EventPage{}, fmt.Errorf("list audit events: %w", err)
	}
	evs, err := pgx.CollectRows(rows, scanStoredEvent)
	if err != nil {
		return EventPage{}, fmt.Errorf("list audit events: %w", err)
	}
	page := EventPage{Events: evs}
	if len(evs) > f.Limit {
		page.Events = evs[:f.Limit]
		page.NextCursor = strconv.FormatInt(page.Events[f.Limit-1].Seq, 10)
	}
	for i := range page.Events {
		page.Events[i].Payload = nil
	}
	return page, nil
}

// EventProof is one event with its two-step proof: the event's leaf inside its batch, and
// the batch leaf inside the log under the latest checkpoint.
type EventProof struct {
	Event    StoredEvent `json:"event"`
	Status   string      `json:"status"` // "outbox", "sealed", "integrated" (after the latest checkpoint), "proven"
	Encoding []byte      `json:"encoding"`
	LeafHash []byte      `json:"leaf_hash"`
	Batch    *BatchProof `json:"batch,omitempty"`
}

// BatchProof is an event's place in its batch and the batch's place in the log.
type BatchProof struct {
	ID         uuid.UUID `json:"id"`
	Count      int       `json:"count"`
	Root       []byte    `json:"root"`
	Index      int       `json:"index"`      // the event's index in the batch
	Proof      [][]byte  `json:"proof"`      // RFC 6962 inclusion proof of the event in the batch tree
	LeafIndex  *int64    `json:"leaf_index"` // the batch leaf's index in the log
	LeafValue  []byte    `json:"leaf_value"` // the batch leaf (docs/audit.md)
	Inclusion  [][]byte  `json:"inclusion"`  // inclusion proof of the batch leaf under Checkpoint
	TreeSize   uint64    `json:"tree_size"`  // size of the tree the inclusion proof is for
	Checkpoint string    `json:"checkpoint"` // the signed checkpoint note
}

// Event returns one event with its proof.
func (s *Service) Event(ctx context.Context, id uuid.UUID) (EventProof, error) {
	return s.event(ctx, id, &proofCache{})
}

// EventProofs returns the proofs of several events (a page of the audit browser), in the
// order of ids: the events in one query, their batches (with their trees) in one more, the
// latest checkpoint once and each batch's log inclusion proof once. Every proof is for the
// same checkpoint. An unknown id is ErrEventNotFound.
func (s *Service) EventProofs(ctx context.Context, ids []uuid.UUID) ([]EventProof, error) {
	if len(ids) == 0 {
		return []EventProof{}, nil
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT `+eventColumns+` FROM audit_events WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("audit events: %w", err)
	}
	evs, err := pgx.CollectRows(rows, scanStoredEvent)
	if err != nil {
		return nil, fmt.Errorf("audit events: %w", err)
	}
	byID := make(map[uuid.UUID]*StoredEvent, len(evs))
	var batches []uuid.UUID
	for i := range evs {
		byID[evs[i].ID] = &evs[i]
		if b := evs[i].BatchID; b != nil && evs[i].BatchIndex != nil {
			batches = append(batches, *b)
		}
	}
	c := &proofCache{}
	if err := c.loadBatches(ctx, s, batches); err != nil {
		return nil, err
	}
	out := make([]EventProof, 0, len(ids))
	for _, id := range ids {
		ev, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("audit event %s: %w", id, ErrEventNotFound)
		}
		p, err := s.prove(ctx, *ev, c)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// proofCache holds what the proofs of several events share.
type proofCache struct {
	batches   map[uuid.UUID]*cachedBatch
	cp        *Checkpoint // the latest checkpoint, once read (nil: not read yet)
	cpMissing bool
	inclusion map[int64][][]byte // log inclusion proof by batch leaf index, under cp
}

type cachedBatch struct {
	count     int
	root, v   []byte
	leafIndex *int64
	tree      *leaf.Tree
}

func (c *proofCache) batch(ctx context.Context, s *Service, id uuid.UUID) (*cachedBatch, error) {
	if b, ok := c.batches[id]; ok {
		return b, nil
	}
	if err := c.loadBatches(ctx, s, []uuid.UUID{id}); err != nil {
		return nil, err
	}
	if b, ok := c.batches[id]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("batch %s: %w", id, pgx.ErrNoRows)
}

// loadBatches reads the batches of ids not cached yet, with their trees, in one query.
func (c *proofCache) loadBatches(ctx context.Context, s *Service, ids []uuid.UUID) error {
	var want []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for _, id := range ids {
		if _, ok := c.batches[id]; !ok && !seen[id] {
			seen[id] = true
			want = append(want, id)
		}
	}
	if len(want) == 0 {
		return nil
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT id, count, root, event_hashes, leaf_value, leaf_index FROM audit_batches WHERE id = ANY($1)`, want)
	if err != nil {
		return fmt.Errorf("batches: %w", err)
	}
	defer rows.Close()
	if c.batches == nil {
		c.batches = map[uuid.UUID]*cachedBatch{}
	}
	for rows.Next() {
		var (
			id uuid.UUID
			b  cachedBatch
			hs []byte
		)
		if err := rows.Scan(&id, &b.count, &b.root, &hs, &b.v, &b.leafIndex); err != nil {
			return fmt.Errorf("batch %s: %w", id, err)
		}
		hashes := make([]leaf.Hash, len(hs)/leaf.HashSize)
		for i := range hashes {
			copy(hashes[i][:], hs[i*leaf.HashSize:])
		}
		tr, err := leaf.NewTree(hashes)
		if err != nil {
			return fmt.Errorf("batch %s: %w", id, err)
		}
		b.tree = tr
		c.batches[id] = &b
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("batches: %w", err)
	}
	return nil
}

func (s *Service) event(ctx context.Context, id uuid.UUID, c *proofCache) (EventProof, error) {
	row := s.cfg.Pool.QueryRow(ctx, `SELECT `+eventColumns+` FROM audit_events WHERE id = $1`, id)
	ev, err := scanStoredEventExtra(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return EventProof{}, fmt.Errorf("audit event %s: %w", id, ErrEventNotFound)
	}
	if err != nil {
		return EventProof{}, fmt.Errorf("audit event %s: %w", id, err)
	}
	return s.prove(ctx, ev, c)
}

// prove builds ev's proof, reading through c what it shares with other events' proofs.
func (s *Service) prove(ctx context.Context, ev StoredEvent, c *proofCache) (EventProof, error) {
	id := ev.ID
	le := ev.Leaf()
	enc, err := le.Encode()
	if err != nil {
		return EventProof{}, fmt.Errorf("audit event %s: %w", id, err)
	}
	lh := leaf.LeafHash(enc)
	out := EventProof{Event: ev, Status: "outbox", Encoding: enc, LeafHash: lh[:]}
	if ev.BatchID == nil || ev.BatchIndex == nil {
		return out, nil
	}
	out.Status = "sealed"
	bt, err := c.batch(ctx, s, *ev.BatchID)
	if err != nil {
		return EventProof{}, fmt.Errorf("audit event %s: %w", id, err)
	}
	count, root, v, leafIndex := bt.count, bt.root, bt.v, bt.leafIndex
	sub, err := bt.tree.InclusionProof(int(*ev.BatchIndex))
	if err != nil {
		return EventProof{}, fmt.Errorf("audit event %s: %w", id, err)
	}
	out.Batch = &BatchProof{ID: *ev.BatchID, Count: count, Root: root, Index: int(*ev.BatchIndex), Proof: hashesToBytes(sub), LeafIndex: leafIndex, LeafValue: v}
	if leafIndex == nil {
		return out, nil
	}
	out.Status = "integrated"
	if c.cp == nil && !c.cpMissing {
		cp, err := LatestCheckpoint(ctx, s.cfg.Pool)
		switch {
		case errors.Is(err, ErrNoCheckpoint):
			c.cpMissing = true
		case err != nil:
			return EventProof{}, fmt.Errorf("audit event %s: %w", id, err)
		default:
			c.cp = &cp
		}
	}
	cp := c.cp
	if cp == nil || uint64(*leafIndex) >= cp.Size {
		return out, nil
	}
	incl, ok := c.inclusion[*leafIndex]
	if !ok {
		if incl, err = s.log.InclusionProof(ctx, uint64(*leafIndex), cp.Size); err != nil {
			return EventProof{}, fmt.Errorf("audit event %s: %w", id, err)
		}
		if c.inclusion == nil {
			c.inclusion = map[int64][][]byte{}
		}
		c.inclusion[*leafIndex] = incl
	}
	out.Status = "proven"
	out.Batch.Inclusion, out.Batch.TreeSize, out.Batch.Checkpoint = nonNil(incl), cp.Size, cp.Note
	return out, nil
}

// ErrProofInvalid is returned by VerifyEventProof for a proof that does not hold.
var ErrProofInvalid = errors.New("audit event proof does not verify")

// VerifyEventProof checks an event's two-step proof (as served by GET
// /api/v1/audit/events/{id} and handed out in receipts) with no database and no log: the
// event's leaf in its batch tree, the batch leaf's inclusion in the log under the signed
// checkpoint, and the checkpoint's signature under verifierKey. The proof's status must be
// "proven". It returns the decoded event.
func VerifyEventProof(p EventProof, verifierKey string) (leaf.Event, error) {
	return verifyEventProof(p, verifierKey, map[string]openedCheckpoint{})
}

// VerifyEventProofs verifies several proofs (as EventProofs returns them) like
// VerifyEventProof, checking each distinct checkpoint's signature once; errs[i] is the
// verdict on ps[i] (nil: verified).
func VerifyEventProofs(ps []EventProof, verifierKey string) (errs []error) {
	opened := map[string]openedCheckpoint{}
	errs = make([]error, len(ps))
	for i, p := range ps {
		_, errs[i] = verifyEventProof(p, verifierKey, opened)
	}
	return errs
}

type openedCheckpoint struct {
	size uint64
	root leaf.Hash
	err  error
}

func verifyEventProof(p EventProof, verifierKey string, opened map[string]openedCheckpoint) (leaf.Event, error) {
	bad := func(format string, args ...any) (leaf.Event, error) {
		return leaf.Event{}, fmt.Errorf("%w: %s", ErrProofInvalid, fmt.Sprintf(format, args...))
	}
	ev, err := leaf.DecodeEvent(p.Encoding)
	if err != nil {
		return bad("event encoding: %v", err)
	}
	b := p.Batch
	if p.Status != "proven" || b == nil || b.LeafIndex == nil || b.Checkpoint == "" {
		return bad("status %q: no complete proof yet", p.Status)
	}
	if len(b.Root) != leaf.HashSize || b.Count <= 0 || b.Index < 0 || b.Index >= b.Count {
		return bad("malformed batch")
	}
	h := leaf.LeafHash(p.Encoding)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(b.Index), uint64(b.Count), h[:], b.Proof, b.Root); err != nil {
		return bad("event not in its batch: %v", err)
	}
	var root leaf.Hash
	copy(root[:], b.Root)
	bl := leaf.Batch{ID: b.ID, Count: uint32(b.Count), Root: root}
	if !bytes.Equal(bl.Encode(), b.LeafValue) {
		return bad("batch leaf value does not match the batch")
	}
	oc, ok := opened[b.Checkpoint]
	if !ok {
		_, oc.size, oc.root, oc.err = OpenCheckpoint(b.Checkpoint, verifierKey)
		opened[b.Checkpoint] = oc
	}
	if oc.err != nil {
		return bad("%v", oc.err)
	}
	size, cpRoot := oc.size, oc.root
	if size != b.TreeSize {
		return bad("checkpoint size %d, proof for %d", size, b.TreeSize)
	}
	lh := leaf.LeafHash(b.LeafValue)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(*b.LeafIndex), size, lh[:], b.Inclusion, cpRoot[:]); err != nil {
		return bad("batch leaf not in the log under the checkpoint: %v", err)
	}
	return ev, nil
}
