package chain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/vigilhealth/vigil/audit/leaf"
)

// Incremental verification (docs/audit.md "Incremental verification"). A verify that found
// nothing returns, in Report.State, what the next run needs to check only what came after:
// the checkpoint it verified (signed note, size, root), the compact range of the log's
// leaves under it (so new leaves are proven against the next checkpoint without reading the
// old ones), the highest event row it read, and per writer session the counter through which
// the numbering is complete. VerifyConfig.Since starts from such a state: verify checks the
// checkpoints from the remembered one on (it must still be there, unchanged, and every later
// one consistent with it), the log leaves after its size, the batches not yet under it, the
// event rows after the remembered one (and every event not yet logged or in a new batch),
// and the numbering after each session's remembered counter. The state is the auditor's: it
// is kept outside the database (a file), where the database's writers cannot change it.

// VerifyState is what an incremental verify starts from (JSON).
type VerifyState struct {
	Origin       string                  `json:"origin"`
	CheckpointID int64                   `json:"checkpoint_id"`
	Checkpoint   string                  `json:"checkpoint"` // the signed note
	Size         uint64                  `json:"size"`
	Root         []byte                  `json:"root"`
	Range        [][]byte                `json:"range"`     // compact range hashes of leaves [0, Size)
	EventSeq     int64                   `json:"event_seq"` // highest audit_events.seq read
	Sessions     map[string]SessionState `json:"sessions,omitempty"`
	Events       int64                   `json:"events"` // event rows verified so far (all runs)
	VerifiedAt   time.Time               `json:"verified_at"`
}

// SessionState is one writer session's numbering as far as it was verified complete.
type SessionState struct {
	Through    uint64   `json:"through"`               // counters 1..Through were all present (or rolled back)
	Above      []uint64 `json:"above,omitempty"`       // counters seen above Through
	RolledBack []uint64 `json:"rolled_back,omitempty"` // rolled-back counters above Through
	Final      uint64   `json:"final,omitempty"`       // counter of its final attestation
}

// ReadVerifyState reads a state file; a missing file is (nil, nil): start with a full verify.
func ReadVerifyState(path string) (*VerifyState, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("verify state: %w", err)
	}
	var s VerifyState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("verify state %s: %w", path, err)
	}
	return &s, nil
}

// WriteVerifyState replaces the state file atomically.
func WriteVerifyState(path string, s *VerifyState) error {
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".verify-state-*")
	if err != nil {
		return fmt.Errorf("verify state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("verify state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("verify state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("verify state: %w", err)
	}
	return os.Rename(tmp.Name(), path)
}

var rangeFactory = compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

// leafRange returns the compact range of leaves [0, base+len(values)), extending the range
// of [0, base) given by its hashes.
func leafRange(base uint64, hashes [][]byte, values [][]byte) (*compact.Range, error) {
	own := make([][]byte, len(hashes)) // the range appends in place: leave the state's slice alone
	for i, h := range hashes {
		own[i] = append([]byte(nil), h...)
	}
	r, err := rangeFactory.NewRange(0, base, own)
	if err != nil {
		return nil, err
	}
	for _, val := range values {
		h := leaf.LeafHash(val)
		if err := r.Append(h[:], nil); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func rangeRoot(r *compact.Range) (leaf.Hash, error) {
	var out leaf.Hash
	if r.End() == 0 {
		copy(out[:], rfc6962.DefaultHasher.EmptyRoot())
		return out, nil
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		return out, err
	}
	copy(out[:], root)
	return out, nil
}

// seedSessions starts the numbering check from the state's sessions.
func (v *verifier) seedSessions() {
	for k, st := range v.cfg.Since.Sessions {
		id, err := uuid.Parse(k)
		if err != nil {
			continue
		}
		ss := &sessionSeen{rolledBack: map[uint64]bool{}, through: st.Through, from: st.Through, finalSeq: st.Final}
		ss.seqs = append(ss.seqs, st.Above...)
		for _, n := range st.RolledBack {
			ss.rolledBack[n] = true
		}
		v.sessions[id] = ss
	}
}

// state is what the next incremental run starts from, after a run without findings.
func (v *verifier) state() *VerifyState {
	if v.cp == nil || v.rng == nil || v.rng.End() != v.cp.Size {
		return nil
	}
	s := &VerifyState{Origin: v.cfg.Origin, CheckpointID: v.cp.ID, Checkpoint: v.cp.Note, Size: v.cp.Size,
		Root: append([]byte(nil), v.cp.Root[:]...), Range: v.rng.Hashes(), EventSeq: v.maxSeq,
		Sessions: map[string]SessionState{}, Events: v.rep.Events, VerifiedAt: v.rep.CheckedAt}
	if v.cfg.Since != nil {
		s.EventSeq = max(s.EventSeq, v.cfg.Since.EventSeq)
		s.Events += v.cfg.Since.Events
	}
	for id, ss := range v.sessions {
		st := SessionState{Through: ss.through, Final: ss.finalSeq}
		for _, n := range ss.seqs {
			if n > ss.through {
				st.Above = append(st.Above, n)
			}
		}
		for n := range ss.rolledBack {
			if n > ss.through {
				st.RolledBack = append(st.RolledBack, n)
			}
		}
		sort.Slice(st.RolledBack, func(i, j int) bool { return st.RolledBack[i] < st.RolledBack[j] })
		s.Sessions[id.String()] = st
	}
	return s
}

// sinceCheckpoint checks that the checkpoint an incremental run starts from is still the
// first of those loaded, unchanged; it reports a fork finding and returns false otherwise.
func (v *verifier) sinceCheckpoint(cps []Checkpoint) bool {
	s := v.cfg.Since
	if len(cps) == 0 || cps[0].ID != s.CheckpointID || cps[0].Note != s.Checkpoint || cps[0].Size != s.Size || !bytes.Equal(cps[0].Root[:], s.Root) {
		v.find(Finding{Kind: FindingFork, Detail: fmt.Sprintf("checkpoint %d (size %d), verified on %s, is gone or changed: the log was rewritten or rolled back since (run a full verify)",
			s.CheckpointID, s.Size, s.VerifiedAt.Format(time.RFC3339))})
		return false
	}
	return true
}
