package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/witness"
)

// WitnessEndpoint is one C2SP tlog-witness Vigil submits its checkpoints to.
type WitnessEndpoint struct {
	// URL is the witness's submission prefix (https://…; add-checkpoint is appended). Empty:
	// the witness is not asked (verify then only checks the stored cosignatures).
	URL string
	// VerifierKey is the witness's cosignature/v1 verifier key ("name+hash+base64").
	VerifierKey string
}

// ErrRolledBack means a witness cosigned a larger checkpoint of this log than the latest one
// the database holds: the log's tail was cut off (truncated, or restored from an old backup).
var ErrRolledBack = errors.New("audit log rolled back: a witness holds a newer checkpoint")

// WitnessResult is what one witness answered.
type WitnessResult struct {
	Witness string `json:"witness"`
	Size    uint64 `json:"size"` // the witness's latest cosigned size
	Error   string `json:"error,omitempty"`
}

// Witness submits the latest checkpoint, with a consistency proof from the last size each
// witness cosigned, to every configured witness, and stores their cosignatures. A witness
// that holds a larger checkpoint than the latest stored one raises a log_rolled_back
// incident and ErrRolledBack.
func (s *Service) Witness(ctx context.Context) ([]WitnessResult, error) {
	cp, err := LatestCheckpoint(ctx, s.cfg.Pool)
	if err != nil {
		return nil, err
	}
	var out []WitnessResult
	var errs []error
	for _, w := range s.cfg.Witnesses {
		r, err := s.witnessOne(ctx, w, cp)
		if err != nil {
			r.Error = err.Error()
			errs = append(errs, err)
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

func (s *Service) witnessOne(ctx context.Context, w WitnessEndpoint, cp Checkpoint) (WitnessResult, error) {
	v, err := witness.NewVerifier(w.VerifierKey)
	if err != nil {
		return WitnessResult{Witness: w.VerifierKey}, err
	}
	res := WitnessResult{Witness: v.Name()}
	if w.URL == "" {
		return res, nil
	}
	var old uint64
	err = s.cfg.Pool.QueryRow(ctx, `SELECT coalesce(max(c.tree_size), 0) FROM audit_cosignatures s
		JOIN audit_checkpoints c ON c.id = s.checkpoint_id WHERE s.witness = $1`, v.Name()).Scan(&old)
	if err != nil {
		return res, err
	}
	client := &witness.Client{URL: w.URL, HTTP: &http.Client{Timeout: 10 * time.Second}}
	for attempt := 0; attempt < 2; attempt++ {
		if old > cp.Size {
			return res, s.rolledBack(ctx, v.Name(), old, cp)
		}
		var pf [][]byte
		if old > 0 && old < cp.Size {
			if pf, err = s.log.ConsistencyProof(ctx, old, cp.Size); err != nil {
				return res, err
			}
		}
		sigs, err := client.AddCheckpoint(ctx, witness.Request{OldSize: old, Proof: pf, Checkpoint: []byte(cp.Note)})
		var conflict *witness.ConflictError
		if errors.As(err, &conflict) {
			res.Size = conflict.Size
			if conflict.Size > cp.Size || (conflict.Size == cp.Size && old == cp.Size) {
				return res, s.rolledBack(ctx, v.Name(), conflict.Size, cp)
			}
			old = conflict.Size // our record of the witness was stale: once more from its size
			continue
		}
		if err != nil {
			return res, err
		}
		line := ""
		for _, l := range witness.SignatureLines(sigs) {
			if at, ok := witness.Cosigned([]byte(cp.Note+l), w.VerifierKey); ok && !at.IsZero() {
				line = l
			}
		}
		if line == "" {
			return res, fmt.Errorf("witness %s answered without a valid cosignature", v.Name())
		}
		res.Size = cp.Size
		_, err = s.cfg.Pool.Exec(ctx, `INSERT INTO audit_cosignatures (checkpoint_id, witness, signature, cosigned_at)
			VALUES ($1,$2,$3,$4) ON CONFLICT (checkpoint_id, witness) DO NOTHING`, cp.ID, v.Name(), line, s.cfg.Now().UTC())
		return res, err
	}
	return res, fmt.Errorf("witness %s: conflicting sizes", v.Name())
}

// rolledBack records the incident of a witness holding a newer checkpoint.
func (s *Service) rolledBack(ctx context.Context, name string, size uint64, cp Checkpoint) error {
	detail := fmt.Sprintf("witness %s cosigned a checkpoint of size %d; the latest checkpoint here (%d) has size %d: the log was cut off or rolled back",
		name, size, cp.ID, cp.Size)
	s.cfg.Logger.ErrorContext(ctx, "AUDIT LOG ROLLED BACK", slog.String("detail", detail))
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO audit_incidents (at, kind, detail) SELECT $1, 'log_rolled_back', $2
			WHERE NOT EXISTS (SELECT 1 FROM audit_incidents WHERE kind = 'log_rolled_back' AND resolved_at IS NULL)`, s.cfg.Now(), detail)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "vigil-audit", AuthMethod: "internal"},
			Action: "audit.log.rolled_back", Object: audit.Object{Type: "audit_log", ID: s.cfg.Origin},
			Outcome: audit.OutcomeFailure, Reason: "log_rolled_back", Payload: map[string]string{"detail": detail}})
		return err
	})
	if err != nil {
		s.cfg.Logger.ErrorContext(ctx, "could not record audit log incident", slog.String("error", err.Error()))
	}
	return fmt.Errorf("%w: %s", ErrRolledBack, detail)
}

// checkWitnesses is verify's part: the latest checkpoint must carry a stored cosignature of
// every required witness (once it is older than the grace period), and no witness that can be
// asked may hold a larger checkpoint of this log.
func (v *verifier) checkWitnesses(ctx context.Context) error {
	if len(v.cfg.Witnesses) == 0 {
		return nil
	}
	if v.cp == nil {
		v.find(Finding{Kind: FindingWitness, Detail: "witnesses are required but no checkpoint was ever issued"})
	}
	for _, w := range v.cfg.Witnesses {
		wv, err := witness.NewVerifier(w.VerifierKey)
		if err != nil {
			return fmt.Errorf("witness key: %w", err)
		}
		if v.cp == nil {
			continue
		}
		var line string
		err = v.q.QueryRow(ctx, `SELECT signature FROM audit_cosignatures WHERE checkpoint_id = $1 AND witness = $2`,
			v.cp.ID, wv.Name()).Scan(&line)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if v.cfg.Now().Sub(v.cp.CreatedAt) > v.cfg.PendingGrace {
				v.find(Finding{Kind: FindingWitness, Detail: fmt.Sprintf("checkpoint %d (size %d) has no cosignature of witness %s", v.cp.ID, v.cp.Size, wv.Name())})
			}
		case err != nil:
			return err
		default:
			if _, ok := witness.Cosigned([]byte(v.cp.Note+line), w.VerifierKey); !ok {
				v.find(Finding{Kind: FindingWitness, Detail: fmt.Sprintf("checkpoint %d: the stored cosignature of witness %s does not verify", v.cp.ID, wv.Name())})
			}
		}
		if w.URL == "" {
			continue
		}
		// Ask the witness its size: an add-checkpoint from size 0 is answered 409 with the
		// size of the newest checkpoint it cosigned (or cosigned, when it never saw this log).
		client := &witness.Client{URL: w.URL, HTTP: &http.Client{Timeout: 10 * time.Second}}
		_, err = client.AddCheckpoint(ctx, witness.Request{OldSize: 0, Checkpoint: []byte(v.cp.Note)})
		var conflict *witness.ConflictError
		switch {
		case errors.As(err, &conflict) && conflict.Size > v.cp.Size:
			v.find(Finding{Kind: FindingWitness, Detail: fmt.Sprintf("witness %s cosigned a checkpoint of size %d, but this log's latest checkpoint has size %d: the log was truncated or rolled back",
				wv.Name(), conflict.Size, v.cp.Size)})
		case errors.As(err, &conflict), err == nil:
		default:
			v.find(Finding{Kind: FindingLogUnavailable, Detail: fmt.Sprintf("witness %s could not be asked: %v", wv.Name(), err)})
		}
	}
	return nil
}

// ErrBadRange is returned by ConsistencyProof for sizes that are not 0 < from ≤ to ≤ the
// latest checkpoint's size.
var ErrBadRange = errors.New("consistency proof sizes out of range")

// ConsistencyProof is an RFC 6962 consistency proof between two tree sizes of the log, with
// the latest signed checkpoint it can be checked against (when To is its size).
type ConsistencyProof struct {
	From       uint64   `json:"from"`
	To         uint64   `json:"to"`
	Proof      [][]byte `json:"proof"` // base64 hashes in JSON
	Checkpoint string   `json:"checkpoint"`
}

// ConsistencyProof returns the proof that the log at size to extends the log at size from,
// for 0 < from ≤ to ≤ the latest checkpoint's size (ErrBadRange otherwise). A third party
// that kept an older checkpoint checks with it that the log was only appended to.
func (s *Service) ConsistencyProof(ctx context.Context, from, to uint64) (ConsistencyProof, error) {
	cp, err := LatestCheckpoint(ctx, s.cfg.Pool)
	if err != nil {
		return ConsistencyProof{}, err
	}
	if from == 0 || from > to || to > cp.Size {
		return ConsistencyProof{}, fmt.Errorf("%w: from %d, to %d, latest checkpoint size %d", ErrBadRange, from, to, cp.Size)
	}
	out := ConsistencyProof{From: from, To: to, Proof: [][]byte{}, Checkpoint: cp.Note}
	if from == to {
		return out, nil
	}
	p, err := s.log.ConsistencyProof(ctx, from, to)
	if err != nil {
		return ConsistencyProof{}, err
	}
	out.Proof = p
	return out, nil
}
