package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/internal/pglisten"
)

// History gives the Engine the stored observations it needs to rebuild per-patient state after
// a restart. It is owned by this package and satisfied by core's observation storage.
//
// ObservationsSince MUST return the patient's stored observations with Time strictly after
// since, in ascending Time order (ties in storage order), artifacts included and flagged, and
// MUST NOT return observations of other patients. It may bound the answer by Limit (keeping
// the newest). An unknown patient is an empty answer, not an error.
type History interface {
	ObservationsSince(ctx context.Context, patientID uuid.UUID, since time.Time, limit int) ([]Observation, error)
}

// Alarms is what the engine needs of the alarm lifecycle; *alarms.Service satisfies it. The
// engine owns this interface and uses nothing else of the alarm service.
type Alarms interface {
	// Apply applies a rule's signal inside tx, the engine's transaction: it opens,
	// re-triggers, changes the severity of, or auto-resolves the patient's open alarm for
	// the rule, each transition audited in tx. It MUST NOT commit or roll back tx; the
	// transitions it returns take effect only if tx commits.
	Apply(ctx context.Context, tx pgx.Tx, sig alarms.Signal) ([]alarms.Transition, error)
	// ResolvePatient resolves, inside tx, every open alarm of the patient with reason, each
	// audited with by's actor; same contract on tx as Apply.
	ResolvePatient(ctx context.Context, tx pgx.Tx, patientID uuid.UUID, by audit.Event, reason string) ([]alarms.Transition, error)
	// ResolveRule resolves, inside tx, every open alarm raised by the rule (it was disabled);
	// same contract on tx as Apply.
	ResolveRule(ctx context.Context, tx pgx.Tx, ruleID string, by audit.Event, reason string) ([]alarms.Transition, error)
	// Notify hands transitions to the alarm notifier. The engine calls it only after the
	// transaction that made them committed, in order. It MUST NOT fail the engine: delivery
	// problems are the notifier's.
	Notify(ctx context.Context, ts []alarms.Transition)
}

// Config configures an Engine. Zero values take the documented defaults.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Recorder records the engine's audit events: rule versions, derived observations,
	// releases, rejections (the process's audit.Outbox). Required.
	Recorder audit.Recorder
	// Alarms turns rule conditions into alarms (*alarms.Service). Required.
	Alarms Alarms
	// History replays observations newer than a patient's checkpoint on restart. Optional:
	// without it, state not covered by a checkpoint (anomaly baselines, pending minimum
	// durations) starts afresh; open alarms are never lost either way.
	History History
	// Handoff is where core hands the observations of every committed upload: the engine
	// drains it (New starts the consumer, Close stops it after consuming what is queued).
	// Optional: without it, the caller calls Evaluate itself.
	Handoff *obs.Handoff
	// ReplayLimit bounds the observations replayed per patient on restart. Default 10,000.
	ReplayLimit int
	// ReplayWindow is how far back a patient without any checkpoint is replayed. Default 1h.
	ReplayWindow time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Rearm is how often a condition that still holds is re-asserted to the alarm service
	// (at most once per Rearm per rule and patient, on a sample that still meets it): an
	// alarm resolved by hand while its condition persists re-opens then. Default 5 s.
	Rearm time.Duration
	// FutureTolerance: a sample stamped more than this ahead of Now (accepted by core within
	// its clock skew) is evaluated at Now, never at its own time, so that it cannot blind the
	// rules to the samples that follow it; its detail says "clamped_from". Default 2 s.
	FutureTolerance time.Duration
	// ArtifactConfirmCount and ArtifactConfirmSpan: samples core flagged as implausible
	// (artifacts) are held back while isolated; once ArtifactConfirmCount of them of one code
	// span at least ArtifactConfirmSpan with no plausible sample in between, they are
	// physiology and evaluated by every rule (from the first of them). Defaults 2 and 15 s.
	ArtifactConfirmCount int
	ArtifactConfirmSpan  time.Duration
	// LateHorizon: a sample older than what was already evaluated of its code by more than
	// this is beyond the rules' look-back: its window is not re-run (it may no longer be
	// readable in full, and the episode is long past); instead the technical condition
	// "late-data" (medium) is raised, naming the samples, their values and how late they
	// came, with the code late_beyond_lookback, so that a clinician reviews the chart.
	// Default (and maximum) 20 minutes, the longest look-back of any rule.
	LateHorizon time.Duration
	// Logger for background work. Default slog.Default().
	Logger *slog.Logger
	// Leases, with several replicas on one database: this replica evaluates only the
	// patients of the buckets it holds, under their fencing tokens, and hands the others'
	// observations to their owners (lease_engine.go). Default: none, the engine evaluates
	// every patient (one process).
	Leases *Leases
	// InboxLimit, with Leases: how many rows this replica forwarded (Forward) may wait in
	// another replica's inbox not yet evaluated by it (as that owner announces its progress)
	// before core's Publish waits for them (Pace): the same back-pressure as the hand-off's
	// bounded queue, which holds the committer and through it the devices (503 backpressure,
	// Retry-After). Default 2,000, one drained batch (inboxBatch): with two replicas an owner has at
	// most about what one replica's hand-off holds (4 × 1,024 batches) waiting.
	InboxLimit int
	// InboxWait bounds how long one Publish waits for an owner's inbox (an owner that died
	// announces nothing until its buckets are taken over). Default 2 s.
	InboxWait time.Duration
	// InboxWorkers, with Leases: how many patients of a drained inbox batch are evaluated at
	// once (a patient's rows always by the same one, in order), as the hand-off's shards
	// evaluate this replica's own uploads; one serial drain fell behind under load
	// (docs/benchmarks.md, HA). Default 4.
	InboxWorkers int
	// Listener, with Leases: the process's shared notification listener
	// (internal/pglisten), on which RunInbox follows vigil_rules_inbox; the caller runs it.
	// Nil: RunInbox listens on a connection of its own.
	Listener *pglisten.Listener
}

// Result is what one Evaluate call produced.
type Result struct {
	// Derived are the derived observations computed (NEWS2 scores), already recorded by the
	// Engine in rules_news2 with their components; core may also store them as observations.
	Derived []Derived
	// Transitions are the committed alarm transitions (already sent to the alarms Notifier),
	// including those of a replay that rebuilt the patient's state first.
	Transitions []alarms.Transition

	replayed []Observation // what a replay that rebuilt the patient's state evaluated
}

// Derived is an observation computed by a rule from others.
type Derived struct {
	Observation
	RuleID      string
	RuleVersion int
	NEWS2       *NEWS2Score // components, for CodeNEWS2
}

// Engine evaluates the current version of every enabled rule for each patient. It is safe
// for concurrent use; evaluations of one patient are serialized.
type Engine struct {
	cfg Config
	st  *engineState
	ls  *leaseState
}

// New loads the latest version of every rule and prepares an Engine. Per-patient state is
// rebuilt lazily, on a patient's first evaluation (or Tick), from its checkpoint and History.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Pool == nil || cfg.Recorder == nil {
		return nil, errors.New("rules: Config.Pool and Config.Recorder are required")
	}
	if cfg.Alarms == nil {
		return nil, errors.New("rules: Config.Alarms is required")
	}
	if cfg.ReplayLimit <= 0 {
		cfg.ReplayLimit = 10000
	}
	if cfg.ReplayWindow <= 0 {
		cfg.ReplayWindow = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rearm <= 0 {
		cfg.Rearm = 5 * time.Second
	}
	if cfg.FutureTolerance <= 0 {
		cfg.FutureTolerance = 2 * time.Second
	}
	if cfg.ArtifactConfirmCount <= 0 {
		cfg.ArtifactConfirmCount = 2
	}
	if cfg.ArtifactConfirmSpan <= 0 {
		cfg.ArtifactConfirmSpan = 15 * time.Second
	}
	if cfg.LateHorizon <= 0 || cfg.LateHorizon > maxLateHorizon {
		cfg.LateHorizon = maxLateHorizon
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.InboxLimit <= 0 {
		cfg.InboxLimit = inboxBatch
	}
	if cfg.InboxWait <= 0 {
		cfg.InboxWait = 2 * time.Second
	}
	if cfg.InboxWorkers <= 0 {
		cfg.InboxWorkers = 4
	}
	e := &Engine{cfg: cfg}
	e.initLeases()
	if err := e.init(ctx); err != nil {
		return nil, err
	}
	// Transitions notified (streams, webhooks) carry the alarm in words (Explain).
	if x, ok := cfg.Alarms.(interface{ SetExplainer(func(alarms.Alarm) any) }); ok {
		x.SetExplainer(func(a alarms.Alarm) any { r := e.Explain(a); return &r })
	}
	if cfg.Handoff != nil {
		if err := cfg.Handoff.Start(e.consume); err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
	}
	return e, nil
}

// consume evaluates one patient's committed observations handed off by core.
func (e *Engine) consume(ctx context.Context, c obs.Committed) error {
	return e.route(ctx, c)
}

// Evaluate runs every rule on the patient's new observations (already committed by core) in
// time order. (With Config.Handoff the engine calls it itself for every committed upload.) Alarm transitions and NEWS2 scores are written, audited and checkpointed in one
// transaction, then notified. Observations of another patient are ignored. On a database
// error, nothing is written and the patient's in-memory state is dropped (rebuilt on the next
// call), so a retry of the same observations is safe.
func (e *Engine) Evaluate(ctx context.Context, patientID uuid.UUID, obs []Observation) (Result, error) {
	return e.evaluate(ctx, patientID, obs)
}

// Tick picks up rule versions created by other processes and the current settings of the
// patients in memory (a patient moved to another ward takes that ward's NEWS2 settings), then
// runs the time-driven rules
// (no-data) for every patient known to the Engine (evaluated since start, or checkpointed
// before) at Config.Now(), and returns the transitions made.
// Escalations and reminders are the alarms Service's own Tick.
func (e *Engine) Tick(ctx context.Context) ([]alarms.Transition, error) { return e.tick(ctx) }

// Checkpoint writes the state of every patient evaluated since its last checkpoint, so that a
// restart replays less. Call it periodically (e.g. every minute) and on shutdown.
func (e *Engine) Checkpoint(ctx context.Context) error { return e.checkpoint(ctx) }

// Rules returns the latest version of every rule.
func (e *Engine) Rules(ctx context.Context) ([]Rule, error) { return e.rules(ctx) }

// Versions returns every version of a rule, oldest first, or ErrRuleNotFound.
func (e *Engine) Versions(ctx context.Context, id string) ([]Rule, error) { return e.versions(ctx, id) }

// CreateVersion stores r as the next version of rule r.ID (version 1 for a new id) and makes
// it current, audited as "rule.version_created" in the same transaction. r.Version is the
// version it was based on (0 for a new rule): if another version was created since,
// ErrVersionConflict. ErrInvalidRule for a malformed definition or an empty Reason; rejections
// are audited. by carries the actor, request id and source address.
func (e *Engine) CreateVersion(ctx context.Context, by audit.Event, r Rule) (Rule, error) {
	return e.createVersion(ctx, by, r)
}

// SetSpO2Scale chooses NEWS2 SpO2 scale 1 or 2 (the latter only for patients with hypercapnic
// respiratory failure, on a clinician's decision) for a patient, audited with a reason.
func (e *Engine) SetSpO2Scale(ctx context.Context, by audit.Event, patientID uuid.UUID, scale int, reason string) error {
	return e.setSpO2Scale(ctx, by, patientID, scale, reason)
}

// SetOxygen documents whether a patient is on supplemental oxygen (nil: not documented),
// audited as "rules.oxygen_set" with a reason. When no oxygen observation is fresh, NEWS2
// scores what is documented (the score says oxygen_documented) rather than assuming air.
func (e *Engine) SetOxygen(ctx context.Context, by audit.Event, patientID uuid.UUID, onOxygen *bool, reason string) error {
	return e.setOxygen(ctx, by, patientID, onOxygen, reason)
}

// SetWardNEWS2 records which NEWS2 parameters a ward charts by hand rather than receiving
// from devices (names rr, spo2, sbp, hr, temp, acvpu, fio2, o2flow; typically acvpu) and how
// long such a charted value stays current (1 min to 24 h), audited as
// "rules.ward_news2_set". For the ward's patients those parameters use maxAge instead of the
// rule's max_age, and raise "news2-incomplete" only when older than that.
func (e *Engine) SetWardNEWS2(ctx context.Context, by audit.Event, wardID uuid.UUID, charted []string, maxAge time.Duration, reason string) error {
	return e.setWardNEWS2(ctx, by, wardID, charted, maxAge, reason, nil)
}

// SetWardNEWS2If is SetWardNEWS2 for a form read earlier: it changes the ward's settings only
// if they are still those the caller saw — last changed at since (WardNEWS2Settings.UpdatedAt;
// the zero time: the ward had no settings of its own). Otherwise nothing is stored, the
// refusal is audited (rules.ward_news2_set, rejected, "stale_settings") and the error wraps
// ErrVersionConflict.
func (e *Engine) SetWardNEWS2If(ctx context.Context, by audit.Event, wardID uuid.UUID, charted []string, maxAge time.Duration, reason string, since time.Time) error {
	return e.setWardNEWS2(ctx, by, wardID, charted, maxAge, reason, &since)
}

// WardNEWS2Settings returns the NEWS2 settings of each ward that has its own (SetWardNEWS2),
// by ward.
func (e *Engine) WardNEWS2Settings(ctx context.Context) (map[uuid.UUID]WardNEWS2Settings, error) {
	return e.wardNEWS2Settings(ctx)
}

// ReleasePatient ends monitoring of a patient (discharge, transfer out): it resolves the
// patient's open alarms with the reason and starts its rule state afresh (keeping only how far
// it was evaluated and its SpO2 scale), so that the no-data rule does not alarm for a device
// that was rightly removed; audited as "rules.patient_released" with the alarms'
// resolutions, in one transaction. New observations of the patient are evaluated as usual.
func (e *Engine) ReleasePatient(ctx context.Context, by audit.Event, patientID uuid.UUID, reason string) error {
	return e.releasePatient(ctx, by, patientID, reason)
}

// Close consumes what waits in Config.Handoff and stops consuming it (observations handed
// off later wait for the next Engine), then writes a final checkpoint.
func (e *Engine) Close(ctx context.Context) error {
	e.waitRebuilds()
	if e.cfg.Handoff != nil {
		if err := e.cfg.Handoff.Stop(ctx); err != nil {
			return fmt.Errorf("rules: %w", err)
		}
	}
	return e.checkpoint(ctx)
}

// WardChartableParams are the NEWS2 parameters a ward may chart by hand (SetWardNEWS2), in
// the order NEWS2 lists them.
func WardChartableParams() []string {
	return []string{"rr", "spo2", "o2flow", "fio2", "sbp", "hr", "acvpu", "temp"}
}
