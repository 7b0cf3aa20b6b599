package chain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// PackFormat names version 1 of the audit pack format (docs/audit.md).
const PackFormat = "vigil-audit-pack/v1"

// ErrPackInvalid is returned by VerifyPack for a pack that does not verify: a changed byte,
// a wrong signature, a proof that fails. Its message says what failed.
var ErrPackInvalid = errors.New("audit pack does not verify")

// Pack is the content of an audit pack: everything needed to verify a range of events with
// no database and no trust in the server. On disk it is a signed note whose text is the
// pack's canonical JSON (compact, one line) and whose signature is by the checkpoint key.
type Pack struct {
	Format      string           `json:"format"`
	Origin      string           `json:"origin"`
	VerifierKey string           `json:"verifier_key"`
	From        time.Time        `json:"from"`
	To          time.Time        `json:"to"`
	Checkpoints []PackCheckpoint `json:"checkpoints"` // all stored checkpoints, oldest first; the last is the one proofs refer to
	Batches     []PackBatch      `json:"batches"`
	Events      []PackEvent      `json:"events"`
	Pending     int              `json:"pending"` // events in the range not yet under the checkpoint (not in the pack)
	// Object is "type id" when the export was narrowed to the events on one object (a
	// patient's access history); empty for a complete range.
	Object string `json:"object,omitempty"`
}

// PackCheckpoint is one signed checkpoint and its consistency proof from the previous one.
type PackCheckpoint struct {
	Note             string   `json:"note"`
	PrevSize         uint64   `json:"prev_size"`
	ConsistencyProof [][]byte `json:"consistency_proof"`
}

// PackBatch is one batch leaf with its inclusion proof under the last checkpoint.
type PackBatch struct {
	ID             uuid.UUID `json:"id"`
	Count          uint32    `json:"count"`
	Root           []byte    `json:"root"`
	LeafIndex      uint64    `json:"leaf_index"`
	InclusionProof [][]byte  `json:"inclusion_proof"`
}

// PackEvent is one event: its canonical leaf encoding, its place and sub-proof in its batch,
// and, when the export revealed them, the plaintext identifiers with their salt.
type PackEvent struct {
	Encoding   []byte    `json:"encoding"`
	Batch      int       `json:"batch"` // index into Pack.Batches
	Index      uint32    `json:"index"` // index in the batch
	BatchProof [][]byte  `json:"batch_proof"`
	Revealed   *Revealed `json:"revealed,omitempty"`
}

// Revealed holds an event's plaintext identifiers and salt, checked against its commitments.
// The payload is never exported.
type Revealed struct {
	Salt       []byte `json:"salt"`
	ActorID    string `json:"actor_id"`
	ObjectID   string `json:"object_id"`
	RequestID  string `json:"request_id"`
	SourceAddr string `json:"source_addr"`
}

// ExportOptions chooses what an export contains.
type ExportOptions struct {
	From, To time.Time // events with From ≤ time < To
	// RevealIDs includes plaintext actor/object/request ids and source addresses (with their
	// salts) where not erased. Default false: the pack holds commitments only.
	RevealIDs bool
	// ObjectType and ObjectID, when set, narrow the pack to the events on that object (one
	// patient's, say); the pack says so in its Object field. Default: every event in range.
	ObjectType, ObjectID string
}

// Export writes a signed audit pack of the events in [From, To) that are proven under the
// latest checkpoint. It returns the number of events written.
func (s *Service) Export(ctx context.Context, w io.Writer, opt ExportOptions) (int, error) {
	if !opt.To.After(opt.From) {
		return 0, fmt.Errorf("audit export: empty range %s – %s", opt.From, opt.To)
	}
	cps, err := loadCheckpoints(ctx, s.cfg.Pool, "ORDER BY id")
	if err != nil {
		return 0, fmt.Errorf("audit export: %w", err)
	}
	if len(cps) == 0 {
		return 0, fmt.Errorf("audit export: %w", ErrNoCheckpoint)
	}
	last := cps[len(cps)-1]
	p := Pack{Format: PackFormat, Origin: s.cfg.Origin, VerifierKey: s.vkey, From: opt.From.UTC(), To: opt.To.UTC(),
		Checkpoints: []PackCheckpoint{}, Batches: []PackBatch{}, Events: []PackEvent{}}
	args := []any{opt.From, opt.To}
	narrow := ""
	if opt.ObjectType != "" || opt.ObjectID != "" {
		p.Object = opt.ObjectType + " " + opt.ObjectID
		args = append(args, opt.ObjectType, opt.ObjectID)
		narrow = " AND e.object_type = $3 AND e.object_id = $4"
	}
	for _, cp := range cps {
		p.Checkpoints = append(p.Checkpoints, PackCheckpoint{Note: cp.Note, PrevSize: cp.PrevSize, ConsistencyProof: nonNil(cp.ConsistencyProof)})
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT `+prefixed("e.", eventColumns)+`, b.leaf_index, b.event_hashes
		FROM audit_events e JOIN audit_batches b ON b.id = e.batch_id
		WHERE e.occurred_at >= $1 AND e.occurred_at < $2`+narrow+` ORDER BY b.leaf_index, e.batch_index`, args...)
	if err != nil {
		return 0, fmt.Errorf("audit export: read events: %w", err)
	}
	type row struct {
		ev     StoredEvent
		index  *int64
		hashes []byte
	}
	var evs []row
	for rows.Next() {
		var r row
		var err error
		r.ev, err = scanStoredEventExtra(rows, &r.index, &r.hashes)
		if err != nil {
			rows.Close()
			return 0, fmt.Errorf("audit export: read event: %w", err)
		}
		evs = append(evs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("audit export: read events: %w", err)
	}
	batchPos := map[uuid.UUID]int{}
	trees := map[uuid.UUID]*leaf.Tree{}
	for _, r := range evs {
		if r.index == nil || uint64(*r.index) >= last.Size {
			p.Pending++
			continue
		}
		bid := *r.ev.BatchID
		pos, ok := batchPos[bid]
		if !ok {
			hashes := make([]leaf.Hash, len(r.hashes)/leaf.HashSize)
			for i := range hashes {
				copy(hashes[i][:], r.hashes[i*leaf.HashSize:])
			}
			tr, err := leaf.NewTree(hashes)
			if err != nil {
				return 0, fmt.Errorf("audit export: batch %s: %w", bid, err)
			}
			incl, err := s.log.InclusionProof(ctx, uint64(*r.index), last.Size)
			if err != nil {
				return 0, fmt.Errorf("audit export: %w", err)
			}
			root := tr.Root()
			pos = len(p.Batches)
			batchPos[bid], trees[bid] = pos, tr
			p.Batches = append(p.Batches, PackBatch{ID: bid, Count: uint32(tr.Size()), Root: root[:],
				LeafIndex: uint64(*r.index), InclusionProof: nonNil(incl)})
		}
		le := r.ev.Leaf()
		enc, err := le.Encode()
		if err != nil {
			return 0, fmt.Errorf("audit export: event %s: %w", r.ev.ID, err)
		}
		sub, err := trees[bid].InclusionProof(int(*r.ev.BatchIndex))
		if err != nil {
			return 0, fmt.Errorf("audit export: event %s: %w", r.ev.ID, err)
		}
		pe := PackEvent{Encoding: enc, Batch: pos, Index: uint32(*r.ev.BatchIndex), BatchProof: hashesToBytes(sub)}
		if opt.RevealIDs && r.ev.Salt != nil {
			pe.Revealed = &Revealed{Salt: r.ev.Salt, ActorID: deref(r.ev.ActorID), ObjectID: deref(r.ev.ObjectID),
				RequestID: deref(r.ev.RequestID), SourceAddr: deref(r.ev.SourceAddr)}
		}
		p.Events = append(p.Events, pe)
	}
	body, err := json.Marshal(p)
	if err != nil {
		return 0, fmt.Errorf("audit export: encode: %w", err)
	}
	ns, err := newNoteSigner(ctx, s.cfg.Origin, s.cfg.Signer)
	if err != nil {
		return 0, err
	}
	signed, err := note.Sign(&note.Note{Text: string(body) + "\n"}, ns)
	if err != nil {
		return 0, fmt.Errorf("audit export: sign: %w", err)
	}
	if _, err := w.Write(signed); err != nil {
		return 0, fmt.Errorf("audit export: write: %w", err)
	}
	return len(p.Events), nil
}

func prefixed(prefix, cols string) string {
	var b bytes.Buffer
	for i, c := range bytes.Split([]byte(cols), []byte(",")) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(prefix)
		b.Write(bytes.TrimSpace(c))
	}
	return b.String()
}

func nonNil(h [][]byte) [][]byte {
	if h == nil {
		return [][]byte{}
	}
	return h
}

func hashesToBytes(hs []leaf.Hash) [][]byte {
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = hs[i][:]
	}
	return out
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// PackEventView is one verified event of a pack, decoded for display.
type PackEventView struct {
	ID         string    `json:"id"`
	Time       time.Time `json:"time"`
	ActorKind  string    `json:"actor_kind"`
	ActorAuth  string    `json:"actor_auth"`
	Action     string    `json:"action"`
	ObjectType string    `json:"object_type"`
	Outcome    string    `json:"outcome"`
	Reason     string    `json:"reason,omitempty"`
	LeafIndex  uint64    `json:"leaf_index"`
	ActorID    string    `json:"actor_id,omitempty"` // only when revealed (and checked)
	ObjectID   string    `json:"object_id,omitempty"`
}

// PackReport is the result of a successful VerifyPack.
type PackReport struct {
	Origin      string          `json:"origin"`
	VerifierKey string          `json:"verifier_key"`
	From        time.Time       `json:"from"`
	To          time.Time       `json:"to"`
	Checkpoints int             `json:"checkpoints"`
	TreeSize    uint64          `json:"tree_size"`
	Batches     int             `json:"batches"`
	Pending     int             `json:"pending"`
	Object      string          `json:"object,omitempty"` // "type id": the pack holds only that object's events
	Events      []PackEventView `json:"events"`
}

// VerifyPack verifies an audit pack offline. trustedKey is the note verifier key the
// auditor trusts (published by the operator); when empty, the key inside the pack is used
// and the report shows it, so the auditor can compare it with the published one. Any changed
// byte makes it fail with ErrPackInvalid.
func VerifyPack(data []byte, trustedKey string) (*PackReport, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrPackInvalid, fmt.Sprintf(format, args...))
	}
	// The pack text is JSON on the first line; read the key from it before checking the
	// signature, then check everything.
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return nil, bad("not a signed pack")
	}
	var p Pack
	dec := json.NewDecoder(bytes.NewReader(data[:nl]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, bad("pack body: %v", err)
	}
	key := trustedKey
	if key == "" {
		key = p.VerifierKey
	}
	v, err := note.NewVerifier(key)
	if err != nil {
		return nil, bad("verifier key: %v", err)
	}
	n, err := note.Open(data, note.VerifierList(v))
	if err != nil {
		return nil, bad("pack signature: %v", err)
	}
	canon, err := json.Marshal(p)
	if err != nil || n.Text != string(canon)+"\n" || !bytes.Equal(data[:nl+1], []byte(n.Text)) {
		return nil, bad("pack body is not in canonical form")
	}
	if p.Format != PackFormat {
		return nil, bad("format %q, want %q", p.Format, PackFormat)
	}
	if len(p.Checkpoints) == 0 {
		return nil, bad("no checkpoint")
	}
	var prevSize uint64
	var prevRoot, root leaf.Hash
	for i, cp := range p.Checkpoints {
		origin, size, r, err := OpenCheckpoint(cp.Note, key)
		if err != nil || origin != p.Origin {
			return nil, bad("checkpoint %d: %v (origin %q)", i, err, origin)
		}
		if i > 0 {
			if cp.PrevSize != prevSize {
				return nil, bad("checkpoint %d: previous size %d, want %d", i, cp.PrevSize, prevSize)
			}
			if err := verifyConsistency(prevSize, size, cp.ConsistencyProof, prevRoot, r); err != nil {
				return nil, bad("checkpoint %d is not consistent with checkpoint %d: %v", i, i-1, err)
			}
		}
		prevSize, prevRoot = size, r
	}
	root = prevRoot
	rep := &PackReport{Origin: p.Origin, VerifierKey: key, From: p.From, To: p.To, Checkpoints: len(p.Checkpoints),
		TreeSize: prevSize, Batches: len(p.Batches), Pending: p.Pending, Object: p.Object, Events: []PackEventView{}}
	for i, b := range p.Batches {
		if len(b.Root) != leaf.HashSize || b.Count == 0 {
			return nil, bad("batch %d: malformed", i)
		}
		var br leaf.Hash
		copy(br[:], b.Root)
		bl := leaf.Batch{ID: b.ID, Count: b.Count, Root: br}
		lh := leaf.LeafHash(bl.Encode())
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, b.LeafIndex, prevSize, lh[:], b.InclusionProof, root[:]); err != nil {
			return nil, bad("batch %s (leaf %d) is not included under the checkpoint: %v", b.ID, b.LeafIndex, err)
		}
	}
	seen := map[[16]byte]bool{}
	for i, pe := range p.Events {
		ev, err := leaf.DecodeEvent(pe.Encoding)
		if err != nil {
			return nil, bad("event %d: %v", i, err)
		}
		if seen[ev.ID] {
			return nil, bad("event %s appears twice", uuid.UUID(ev.ID))
		}
		seen[ev.ID] = true
		if pe.Batch < 0 || pe.Batch >= len(p.Batches) {
			return nil, bad("event %s: no batch %d", uuid.UUID(ev.ID), pe.Batch)
		}
		b := p.Batches[pe.Batch]
		h := leaf.LeafHash(pe.Encoding)
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(pe.Index), uint64(b.Count), h[:], pe.BatchProof, b.Root); err != nil {
			return nil, bad("event %s is not in batch %s: %v", uuid.UUID(ev.ID), b.ID, err)
		}
		if ev.Time.Before(p.From) || !ev.Time.Before(p.To) {
			return nil, bad("event %s at %s is outside the pack's range", uuid.UUID(ev.ID), ev.Time)
		}
		view := PackEventView{ID: uuid.UUID(ev.ID).String(), Time: ev.Time, ActorKind: ev.ActorKind, ActorAuth: ev.ActorAuth,
			Action: ev.Action, ObjectType: ev.ObjectType, Outcome: ev.Outcome, Reason: ev.Reason, LeafIndex: b.LeafIndex}
		if r := pe.Revealed; r != nil {
			for _, f := range []struct {
				label, v string
				c        leaf.Hash
			}{{leaf.LabelActorID, r.ActorID, ev.ActorID}, {leaf.LabelObjectID, r.ObjectID, ev.ObjectID},
				{leaf.LabelRequestID, r.RequestID, ev.RequestID}, {leaf.LabelSourceAddr, r.SourceAddr, ev.SourceAddr}} {
				if leaf.Commit(r.Salt, f.label, []byte(f.v)) != f.c {
					return nil, bad("event %s: revealed %s does not match its commitment", uuid.UUID(ev.ID), f.label)
				}
			}
			view.ActorID, view.ObjectID = r.ActorID, r.ObjectID
		}
		rep.Events = append(rep.Events, view)
	}
	return rep, nil
}
