package chain

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// Verification in the server (docs/audit.md "Verification in the server"). The server
// verifies its own trail in the background: one replica per database (the caller runs
// VerifyInBackground on the leader) runs an incremental verify every few minutes, from the
// state of its last run without findings, and stores each run's result in
// audit_verifications; GET /api/v1/audit/verify serves the latest. An auditor may start a
// full re-verification (StartFullVerify), audited with who started it and its result. One
// run at a time per database: every run holds a PostgreSQL advisory lock on a connection of
// its own while it runs, and a second one is refused with ErrVerifyRunning.
//
// The incremental state of each clean run is stored with it, signed by the audit checkpoint
// key (storeState): a new leader (or a restarted server) resumes from the state of the last
// complete run when that run was clean and its signature verifies, so that it does not
// re-read the whole trail at every start; otherwise (no stored state, the last complete run
// had findings, a state whose signature does not verify: recorded as
// audit.verify.state_rejected) it starts with a full run. A state read back unsigned would let
// the database's writers choose what the next run skips; with the signature they can only
// make it start over. A full run is also what an auditor's POST starts.

// ErrVerifyRunning is returned when a verification is already running on the database.
var ErrVerifyRunning = errors.New("an audit verification is already running")

// ErrNoVerification is returned by LatestVerification before the first run finished.
var ErrNoVerification = errors.New("no audit verification has finished yet")

const (
	verifyLock = "vigil.audit.verify" // advisory lock key: hashtext(verifyLock)
	// maxStoredFindings bounds the findings stored with a run (their count is kept).
	maxStoredFindings = 1000
	// RunIncremental and RunFull are the kinds of a VerifyRun.
	RunIncremental = "incremental"
	RunFull        = "full"
)

// VerifyRun is one verification run of the server (a row of audit_verifications).
type VerifyRun struct {
	ID        int64        `json:"id"`
	Kind      string       `json:"kind"` // RunIncremental or RunFull
	StartedAt time.Time    `json:"started_at"`
	StartedBy *audit.Actor `json:"started_by,omitempty"` // who started a full run; nil for the background pass
	// FinishedAt is nil while the run goes on.
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	OK         *bool      `json:"ok,omitempty"`
	// TreeSize and Checkpoint are of the checkpoint the run verified against.
	TreeSize   *uint64            `json:"tree_size,omitempty"`
	Checkpoint *CheckpointSummary `json:"checkpoint,omitempty"`
	// Events is the event rows this run verified; TotalEvents those verified in all since the
	// last full run (an incremental run adds its own to its state's).
	Events      int64 `json:"events"`
	TotalEvents int64 `json:"total_events"`
	// Findings are the run's findings (at most the first 1,000; FindingCount is all of them).
	Findings     []Finding `json:"findings"`
	FindingCount int       `json:"finding_count"`
	// Report is the rest of the run's report (counts, pending events), without the findings.
	Report *Report `json:"report,omitempty"`
	// Error says why the run could not complete (the database or the log unreachable, the
	// server stopped), or that its process died before it finished ("abandoned").
	Error string `json:"error,omitempty"`
}

// LatestVerification is what GET /api/v1/audit/verify serves: the latest finished run, and
// the run going on now, if any.
type LatestVerification struct {
	VerifyRun
	Running *VerifyRun `json:"running,omitempty"`
}

// verifyRuns is the Service's side of the runs.
type verifyRuns struct {
	mu     sync.Mutex
	state  *VerifyState // the state of the last run without findings (read back signed at start)
	lastOK *bool        // the background pass's last result (an event is recorded when it turns bad)

	ctx    context.Context // cancelled by Service.Close: a full run in the background stops
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// lockRun takes the database's verification lock on a connection of its own, or returns
// ErrVerifyRunning when another run holds it.
func (s *Service) lockRun(ctx context.Context) (unlock func(), err error) {
	conn, err := s.cfg.Pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit verify: %w", err)
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, verifyLock).Scan(&got); err != nil {
		conn.Release()
		return nil, fmt.Errorf("audit verify: lock: %w", err)
	}
	if !got {
		conn.Release()
		return nil, ErrVerifyRunning
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(hashtext($1))`, verifyLock); err != nil {
			_ = conn.Conn().Close(uctx) // closing the session releases its locks
		}
		conn.Release()
	}, nil
}

// beginRun stores a new run (and abandons the runs whose process died unfinished: nobody
// else holds the lock now) and, for a full run, records who started it, in one transaction.
func (s *Service) beginRun(ctx context.Context, kind string, by *audit.Event) (VerifyRun, error) {
	run := VerifyRun{Kind: kind, StartedAt: s.cfg.Now().UTC()}
	if by != nil {
		a := by.Actor
		run.StartedBy = &a
	}
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE audit_verifications SET finished_at = $1, error = 'abandoned: its process stopped before it finished'
			WHERE finished_at IS NULL`, run.StartedAt); err != nil {
			return err
		}
		var actor []byte
		if run.StartedBy != nil {
			actor, _ = json.Marshal(run.StartedBy)
		}
		if err := tx.QueryRow(ctx, `INSERT INTO audit_verifications (kind, started_at, started_by) VALUES ($1, $2, $3) RETURNING id`,
			kind, run.StartedAt, actor).Scan(&run.ID); err != nil {
			return err
		}
		if by == nil {
			return nil
		}
		ev := *by
		ev.Time, ev.Action, ev.Outcome = run.StartedAt, "audit.verify.started", audit.OutcomeSuccess
		ev.Object = audit.Object{Type: "audit_verification", ID: fmt.Sprint(run.ID)}
		ev.Payload = map[string]any{"kind": kind}
		_, err := s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return VerifyRun{}, fmt.Errorf("audit verify: store the run: %w", err)
	}
	return run, nil
}

// finishRun stores the run's result (once) and, for a full run or a background pass whose
// result turned bad, records it as an event.
func (s *Service) finishRun(ctx context.Context, run *VerifyRun, rep *Report, runErr error, by *audit.Event) error {
	now := s.cfg.Now().UTC()
	run.FinishedAt = &now
	var findings, report []byte
	if rep != nil {
		ok := rep.OK
		run.OK = &ok
		run.Events = rep.Events
		run.TotalEvents = rep.Events
		if rep.State != nil {
			run.TotalEvents = rep.State.Events
		} else if rep.Incremental && run.Kind == RunIncremental {
			s.runs.mu.Lock()
			if st := s.runs.state; st != nil {
				run.TotalEvents += st.Events
			}
			s.runs.mu.Unlock()
		}
		run.Checkpoint = rep.Checkpoint
		if rep.Checkpoint != nil {
			size := rep.Checkpoint.Size
			run.TreeSize = &size
		}
		run.FindingCount = len(rep.Findings)
		run.Findings = rep.Findings[:min(len(rep.Findings), maxStoredFindings)]
		rest := *rep
		rest.State, rest.Findings = nil, nil
		run.Report = &rest
		findings, _ = json.Marshal(run.Findings)
		report, _ = json.Marshal(struct {
			*Report
			FindingCount int `json:"finding_count"`
		}{&rest, run.FindingCount})
	}
	if runErr != nil {
		run.Error = runErr.Error()
	}
	var cpID *int64
	if run.Checkpoint != nil {
		cpID = &run.Checkpoint.ID
	}
	var state, stateSig []byte
	if rep != nil && rep.OK && rep.State != nil {
		var err error
		if state, stateSig, err = s.signState(ctx, rep.State); err != nil {
			// The result is stored all the same; the next leader starts with a full run.
			s.cfg.Logger.WarnContext(ctx, "audit verify: state not signed", slog.Int64("run", run.ID), slog.String("error", err.Error()))
			state, stateSig = nil, nil
		}
	}
	var errText *string
	if run.Error != "" {
		errText = &run.Error
	}
	return pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE audit_verifications SET finished_at = $2, ok = $3, tree_size = $4, checkpoint_id = $5,
				events = $6, total_events = $7, findings = $8, report = $9, error = $10, state = $11, state_sig = $12
				WHERE id = $1 AND finished_at IS NULL`,
			run.ID, now, run.OK, run.TreeSize, cpID, run.Events, run.TotalEvents, findings, report, errText, state, stateSig); err != nil {
			return fmt.Errorf("audit verify: store the result: %w", err)
		}
		if by == nil {
			return nil
		}
		ev := *by
		ev.RequestID = "" // the request was answered when the run started; the run id links the two
		ev.Time, ev.Action, ev.Outcome = now, "audit.verify.completed", audit.OutcomeSuccess
		ev.Object = audit.Object{Type: "audit_verification", ID: fmt.Sprint(run.ID)}
		p := map[string]any{"kind": run.Kind, "events": run.Events, "findings": run.FindingCount}
		if run.OK != nil {
			p["ok"] = *run.OK
		}
		if run.TreeSize != nil {
			p["tree_size"] = *run.TreeSize
		}
		kinds := map[string]int{}
		for _, f := range run.Findings {
			kinds[f.Kind]++
		}
		if len(kinds) > 0 {
			p["finding_kinds"] = kinds
		}
		if run.Error != "" {
			ev.Outcome, ev.Reason, p["error"] = audit.OutcomeFailure, "verify_failed", run.Error
		}
		ev.Payload = p
		_, err := s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
}

// verifyFrom runs Verify from state (nil: a full run) and keeps the new state when the run
// found nothing.
func (s *Service) verifyFrom(ctx context.Context, state *VerifyState) (*Report, error) {
	cfg := s.VerifyConfig()
	cfg.Since = state
	rep, err := Verify(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if rep.State != nil {
		s.runs.mu.Lock()
		s.runs.state = rep.State
		s.runs.mu.Unlock()
	}
	return rep, nil
}

// VerifyInBackground is one pass of the background verification: an incremental verify
// from the last run without findings (at a leader's first pass, from the state stored with the
// last complete run when it was clean and its signature verifies; a full one when there is
// none), its result stored. Run it
// on one replica per database (the leader); a pass that finds another run going on returns
// ErrVerifyRunning and does nothing. A result that turns bad (findings after a clean run) is
// also recorded as an event (audit.verify.completed by the service).
func (s *Service) VerifyInBackground(ctx context.Context) (VerifyRun, error) {
	unlock, err := s.lockRun(ctx)
	if err != nil {
		return VerifyRun{}, err
	}
	defer unlock()
	s.runs.mu.Lock()
	state := s.runs.state
	s.runs.mu.Unlock()
	if state == nil {
		// A new leader: resume from the last complete run, if it was clean and its state is
		// authentic.
		st, err := s.storedState(ctx)
		if err != nil {
			return VerifyRun{}, err
		}
		if st != nil {
			s.runs.mu.Lock()
			if s.runs.state == nil {
				s.runs.state = st
			}
			state = s.runs.state
			s.runs.mu.Unlock()
		}
	}
	kind := RunIncremental
	if state == nil {
		kind = RunFull
	}
	run, err := s.beginRun(ctx, kind, nil)
	if err != nil {
		return VerifyRun{}, err
	}
	rep, verr := s.verifyFrom(ctx, state)
	var by *audit.Event
	if verr == nil {
		s.runs.mu.Lock()
		turned := !rep.OK && (s.runs.lastOK == nil || *s.runs.lastOK)
		ok := rep.OK
		s.runs.lastOK = &ok
		s.runs.mu.Unlock()
		if turned {
			by = &audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "vigil", AuthMethod: "internal"}}
		}
	}
	if err := s.finishRun(context.WithoutCancel(ctx), &run, rep, verr, by); err != nil {
		return run, err
	}
	return run, verr
}

// StartFullVerify starts a full re-verification in the background on behalf of by (an
// event template with the actor, request id and source address) and returns the run as
// stored when it started. It is recorded as audit.verify.started, and its result as
// audit.verify.completed, both with by's actor. ErrVerifyRunning when a run (of this or
// another replica) is going on. Close stops a run that is still going (its result says so).
func (s *Service) StartFullVerify(ctx context.Context, by audit.Event) (VerifyRun, error) {
	if s.runs.ctx == nil || s.runs.ctx.Err() != nil {
		return VerifyRun{}, errors.New("audit verify: the service is closed")
	}
	unlock, err := s.lockRun(ctx)
	if err != nil {
		return VerifyRun{}, err
	}
	run, err := s.beginRun(ctx, RunFull, &by)
	if err != nil {
		unlock()
		return VerifyRun{}, err
	}
	s.runs.wg.Add(1)
	go func() {
		defer s.runs.wg.Done()
		defer unlock()
		rctx := s.runs.ctx
		r := run
		rep, verr := s.verifyFrom(rctx, nil)
		if verr == nil {
			s.runs.mu.Lock()
			ok := rep.OK
			s.runs.lastOK = &ok
			s.runs.mu.Unlock()
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(rctx), 10*time.Second)
		defer cancel()
		if err := s.finishRun(fctx, &r, rep, verr, &by); err != nil {
			s.cfg.Logger.ErrorContext(fctx, "audit verify: full run", slog.Int64("run", r.ID), slog.String("error", err.Error()))
		}
	}()
	return run, nil
}

// WaitVerifications waits for the full runs started by StartFullVerify to finish.
func (s *Service) WaitVerifications() { s.runs.wg.Wait() }

// LatestVerification returns the latest finished run and the run going on, if any
// (ErrNoVerification before the first run finished and while none runs).
func (s *Service) LatestVerification(ctx context.Context) (LatestVerification, error) {
	var out LatestVerification
	rows, err := s.cfg.Pool.Query(ctx, `(SELECT id, kind, started_at, started_by, finished_at, ok, tree_size, events, total_events, findings, report, error
			FROM audit_verifications WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1)
		UNION ALL
		(SELECT id, kind, started_at, started_by, finished_at, ok, tree_size, events, total_events, findings, report, error
			FROM audit_verifications WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1)`)
	if err != nil {
		return out, fmt.Errorf("audit verify: latest: %w", err)
	}
	runs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (VerifyRun, error) {
		var v VerifyRun
		var by, findings, report []byte
		var size, events, total *int64
		var errText *string
		if err := r.Scan(&v.ID, &v.Kind, &v.StartedAt, &by, &v.FinishedAt, &v.OK, &size, &events, &total, &findings, &report, &errText); err != nil {
			return v, err
		}
		if by != nil {
			v.StartedBy = new(audit.Actor)
			if err := json.Unmarshal(by, v.StartedBy); err != nil {
				return v, err
			}
		}
		if size != nil {
			u := uint64(*size)
			v.TreeSize = &u
		}
		if events != nil {
			v.Events = *events
		}
		if total != nil {
			v.TotalEvents = *total
		}
		if errText != nil {
			v.Error = *errText
		}
		v.Findings = []Finding{}
		if findings != nil {
			if err := json.Unmarshal(findings, &v.Findings); err != nil {
				return v, err
			}
		}
		if report != nil {
			var rep struct {
				Report
				FindingCount int `json:"finding_count"`
			}
			if err := json.Unmarshal(report, &rep); err != nil {
				return v, err
			}
			rep.Report.Findings = nil
			v.Report, v.FindingCount, v.Checkpoint = &rep.Report, rep.FindingCount, rep.Report.Checkpoint
		}
		return v, nil
	})
	if err != nil {
		return out, fmt.Errorf("audit verify: latest: %w", err)
	}
	found := false
	for i := range runs {
		if runs[i].FinishedAt != nil {
			out.VerifyRun, found = runs[i], true
		} else {
			r := runs[i]
			out.Running = &r
		}
	}
	if out.Running != nil && found && out.Running.ID < out.ID {
		out.Running = nil // (cannot happen: a run abandons the older unfinished ones)
	}
	if !found {
		if out.Running == nil {
			return out, ErrNoVerification
		}
		out.Findings = []Finding{}
	}
	return out, nil
}

// stateLabel starts the message a stored verify state's signature covers. Its NUL byte makes
// the message an impossible signed note: the checkpoint key's signature over a state can
// never pass for a checkpoint, nor a checkpoint's for a state.
const stateLabel = "vigil-audit-verify-state-v1\x00"

func stateMessage(origin string, state []byte) []byte {
	m := append([]byte(stateLabel), origin...)
	return append(append(m, 0), state...)
}

// signState returns the state's JSON and its signature by the checkpoint key.
func (s *Service) signState(ctx context.Context, st *VerifyState) (state, sig []byte, err error) {
	if state, err = json.Marshal(st); err != nil {
		return nil, nil, err
	}
	if sig, err = s.cfg.Signer.Sign(ctx, stateMessage(s.cfg.Origin, state)); err != nil {
		return nil, nil, err
	}
	return state, sig, nil
}

// storedState returns the state stored with the last complete run (finished, no error) when
// that run was clean, its state is signed by this service's checkpoint key and of this log,
// or nil (start with a full run). A state whose signature does not verify is recorded as
// audit.verify.state_rejected.
func (s *Service) storedState(ctx context.Context) (*VerifyState, error) {
	var (
		id            int64
		ok            *bool
		state, sigval []byte
	)
	err := s.cfg.Pool.QueryRow(ctx, `SELECT id, ok, state, state_sig FROM audit_verifications
		WHERE finished_at IS NOT NULL AND error IS NULL ORDER BY finished_at DESC, id DESC LIMIT 1`).Scan(&id, &ok, &state, &sigval)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit verify: stored state: %w", err)
	}
	if ok == nil || !*ok || state == nil {
		return nil, nil
	}
	pub, isEd := s.cfg.Signer.Public().(ed25519.PublicKey)
	var st VerifyState
	switch {
	case !isEd || len(sigval) != ed25519.SignatureSize || !ed25519.Verify(pub, stateMessage(s.cfg.Origin, state), sigval):
		s.rejectState(ctx, id, "invalid_state_signature")
		return nil, nil
	case json.Unmarshal(state, &st) != nil || st.Origin != s.cfg.Origin:
		s.rejectState(ctx, id, "invalid_state")
		return nil, nil
	}
	return &st, nil
}

// rejectState records that the stored state of run id was not trusted (the pass runs in full).
func (s *Service) rejectState(ctx context.Context, id int64, reason string) {
	s.cfg.Logger.ErrorContext(ctx, "audit verify: the state stored with the last run is not authentic; verifying in full",
		slog.Int64("run", id), slog.String("reason", reason))
	_, err := s.cfg.Recorder.RecordNow(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "vigil", AuthMethod: "internal"},
		Action: "audit.verify.state_rejected", Object: audit.Object{Type: "audit_verification", ID: fmt.Sprint(id)},
		Outcome: audit.OutcomeFailure, Reason: reason})
	if err != nil {
		s.cfg.Logger.ErrorContext(ctx, "audit verify: record the rejected state", slog.String("error", err.Error()))
	}
}
