package rules

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/alarms"
)

// engineActor is who performs the engine's own actions.
var engineActor = audit.Actor{Kind: audit.ActorService, ID: "vigil-rules", AuthMethod: "internal"}

// ruleSet is an immutable snapshot of the enabled current rule versions.
type ruleSet struct {
	list   []*Rule
	byCode map[string][]*Rule
}

type engineState struct {
	rules    atomic.Pointer[ruleSet]
	current  map[string]Rule // latest version of every rule (guarded by mu)
	disabled map[string]int  // highest disabled version of each rule (guarded by mu)
	versions int             // number of stored rule versions when last loaded (guarded by mu)
	mu       sync.Mutex      // guards current and patients
	patients map[uuid.UUID]*patientEntry
}

type patientEntry struct {
	mu     sync.Mutex
	loaded bool
	dirty  bool // state changed since the last checkpoint
	st     *patientState
	token  int64  // the lease token the state was loaded under (lease_engine.go)
	gen    uint64 // how many times the state was loaded: inbox rows evaluated on one load are settled only with it
}

func (e *Engine) init(ctx context.Context) error {
	e.st = &engineState{current: map[string]Rule{}, disabled: map[string]int{}, patients: map[uuid.UUID]*patientEntry{}}
	if err := e.reloadRules(ctx); err != nil {
		return err
	}
	rows, err := e.cfg.Pool.Query(ctx, `SELECT patient_id FROM rules_patient_state`)
	if err != nil {
		return fmt.Errorf("rules: load checkpoints: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return fmt.Errorf("rules: load checkpoints: %w", err)
	}
	for _, id := range ids {
		e.st.patients[id] = &patientEntry{}
	}
	return nil
}

// reloadRules reads the latest version of every rule (and which were disabled) and
// publishes them; it is how versions created by another process are picked up (Tick).
func (e *Engine) reloadRules(ctx context.Context) error {
	var count int
	if err := e.cfg.Pool.QueryRow(ctx, `SELECT count(*) FROM rules_versions`).Scan(&count); err != nil {
		return fmt.Errorf("rules: load: %w", err)
	}
	rs, err := e.rules(ctx)
	if err != nil {
		return fmt.Errorf("rules: load: %w", err)
	}
	disabled := map[string]int{}
	drows, err := e.cfg.Pool.Query(ctx, `SELECT rule_id, max(version) FROM rules_versions WHERE NOT enabled GROUP BY rule_id`)
	if err != nil {
		return fmt.Errorf("rules: load: %w", err)
	}
	for drows.Next() {
		var id string
		var v int
		if err := drows.Scan(&id, &v); err != nil {
			drows.Close()
			return fmt.Errorf("rules: load: %w", err)
		}
		disabled[id] = v
	}
	drows.Close()
	if err := drows.Err(); err != nil {
		return fmt.Errorf("rules: load: %w", err)
	}
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	e.st.current = map[string]Rule{}
	for _, r := range rs {
		e.st.current[r.ID] = r
	}
	e.st.disabled = disabled
	e.st.versions = count
	e.rebuildRuleSet()
	return nil
}

// reloadIfChanged reloads the rules when the number of stored versions changed.
func (e *Engine) reloadIfChanged(ctx context.Context) error {
	var count int
	if err := e.cfg.Pool.QueryRow(ctx, `SELECT count(*) FROM rules_versions`).Scan(&count); err != nil {
		return fmt.Errorf("rules: check versions: %w", err)
	}
	e.st.mu.Lock()
	same := count == e.st.versions
	e.st.mu.Unlock()
	if same {
		return nil
	}
	return e.reloadRules(ctx)
}

// rebuildRuleSet publishes a new snapshot from current; the caller holds mu (or is init).
func (e *Engine) rebuildRuleSet() {
	set := &ruleSet{byCode: map[string][]*Rule{}}
	for _, r := range e.st.current {
		if !r.Enabled {
			continue
		}
		r := r
		r.lastDisabled = e.st.disabled[r.ID]
		set.list = append(set.list, &r)
		var code string
		switch r.Kind {
		case KindThreshold:
			code = r.Threshold.Code
		case KindRate:
			code = r.Rate.Code
		case KindAnomaly:
			code = r.Anomaly.Code
		}
		if code != "" {
			set.byCode[code] = append(set.byCode[code], &r)
		}
	}
	e.st.rules.Store(set)
}

func (e *Engine) installRule(r Rule) {
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	if cur, ok := e.st.current[r.ID]; ok && cur.Version >= r.Version {
		return
	}
	e.st.current[r.ID] = r
	if !r.Enabled {
		e.st.disabled[r.ID] = r.Version
	}
	e.st.versions++
	e.rebuildRuleSet()
}

// lockPatient returns the patient's entry locked and loaded (rebuilt from its checkpoint and
// History on first use, whose result is returned). The caller unlocks p.mu.
func (e *Engine) lockPatient(ctx context.Context, pid uuid.UUID) (*patientEntry, Result, error) {
	e.st.mu.Lock()
	p := e.st.patients[pid]
	if p == nil {
		p = &patientEntry{}
		e.st.patients[pid] = p
	}
	e.st.mu.Unlock()
	p.mu.Lock()
	var replayed Result
	if !p.loaded || p.token != e.leaseToken(pid) {
		r, err := e.load(ctx, pid, p)
		if err != nil {
			p.mu.Unlock()
			return nil, Result{}, err
		}
		replayed = r
	}
	return p, replayed, nil
}

// load rebuilds a patient's state: its checkpoint, its settings, then a replay through
// History of the observations newer than the checkpoint (whose transitions are applied: they
// were never applied before, since every transition moves the checkpoint with it).
func (e *Engine) load(ctx context.Context, pid uuid.UUID, p *patientEntry) (Result, error) {
	p.token = e.leaseToken(pid)
	p.gen++
	st := newPatientState()
	var raw []byte
	err := e.cfg.Pool.QueryRow(ctx, `SELECT state FROM rules_patient_state WHERE patient_id=$1`, pid).Scan(&raw)
	checkpointed := err == nil
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Result{}, fmt.Errorf("rules: load state of patient %s: %w", pid, err)
	default:
		if err := json.Unmarshal(raw, st); err != nil {
			return Result{}, fmt.Errorf("rules: decode state of patient %s: %w", pid, err)
		}
		if st.Latest == nil {
			st.Latest = map[string]point{}
		}
		if st.Rules == nil {
			st.Rules = map[string]*ruleState{}
		}
	}
	if st.Codes == nil {
		st.Codes = map[string]time.Time{}
		for _, c := range st.ThroughCodes { // a checkpoint from before per-code marks
			st.Codes[c] = st.Through
		}
	}
	if st.Suspect == nil {
		st.Suspect = map[string]*suspect{}
	}
	if err := e.loadSettings(ctx, pid, st); err != nil {
		return Result{}, err
	}
	p.st, p.loaded, p.dirty = st, true, false
	if e.cfg.History == nil || p.token == 0 { // without history, or another replica evaluates the patient
		return Result{}, nil
	}
	since := e.now().Add(-e.cfg.ReplayWindow)
	if checkpointed {
		since = st.Through.Add(-time.Microsecond) // observations at Through itself are de-duplicated by code
	}
	obs, err := e.cfg.History.ObservationsSince(ctx, pid, since, e.cfg.ReplayLimit)
	if err != nil {
		p.loaded, p.st = false, nil
		return Result{}, fmt.Errorf("rules: replay patient %s: %w", pid, err)
	}
	if len(obs) == 0 {
		return Result{}, nil
	}
	set := e.st.rules.Load()
	res, err := e.runAndCommit(ctx, pid, p, func(x *runner) { x.observe(set.list, set.byCode, obs) })
	if err != nil {
		return Result{}, fmt.Errorf("rules: replay patient %s: %w", pid, err)
	}
	res.replayed = obs
	return res, nil
}

func (e *Engine) evaluate(ctx context.Context, pid uuid.UUID, obs []Observation) (Result, error) {
	return e.evaluateGen(ctx, pid, obs, nil)
}

// evaluateGen is evaluate; gen, when not nil, receives the load generation of the state the
// observations were evaluated on (lease_engine.go).
func (e *Engine) evaluateGen(ctx context.Context, pid uuid.UUID, obs []Observation, gen *uint64) (Result, error) {
	if len(obs) == 0 {
		return Result{}, nil
	}
	p, replayed, err := e.lockPatient(ctx, pid)
	if err != nil {
		return Result{}, err
	}
	defer p.mu.Unlock()
	if gen != nil {
		*gen = p.gen
	}
	if p.token == 0 { // another replica evaluates the patient (lease_engine.go)
		return replayed, ErrNotOwner
	}
	own := make([]Observation, 0, len(obs))
	if len(replayed.replayed) > 0 {
		// The replay that rebuilt the patient's state evaluated what History holds, which
		// includes these committed observations: they are not evaluated twice (as late ones).
		type key struct {
			code string
			at   time.Time
		}
		done := make(map[key]bool, len(replayed.replayed))
		for _, o := range replayed.replayed {
			done[key{o.Code, o.EffectiveAt}] = true
		}
		for _, o := range obs {
			if !done[key{o.Code, o.EffectiveAt}] {
				own = append(own, o)
			}
		}
		replayed.replayed = nil
	} else {
		own = append(own, obs...)
	}
	set := e.st.rules.Load()
	hist, err := e.lateWindow(ctx, pid, p.st, set.list, own)
	if err != nil {
		return replayed, err
	}
	res, err := e.runAndCommit(ctx, pid, p, func(x *runner) { x.hist = hist; x.observe(set.list, set.byCode, own) })
	replayed.Derived = append(replayed.Derived, res.Derived...)
	replayed.Transitions = append(replayed.Transitions, res.Transitions...)
	return replayed, err
}

// runAndCommit runs fn on the patient's state (p locked); when it produced signals or derived
// observations they are written with the state checkpoint in one transaction and notified.
// On failure the in-memory state is dropped, to be rebuilt from the database.
func (e *Engine) runAndCommit(ctx context.Context, pid uuid.UUID, p *patientEntry, fn func(*runner)) (Result, error) {
	x := &runner{pid: pid, ps: p.st, now: e.now(), opts: runnerOptions{rearm: e.cfg.Rearm, futureTol: e.cfg.FutureTolerance, lateHorizon: e.cfg.LateHorizon,
		artifactCount: e.cfg.ArtifactConfirmCount, artifactSpan: e.cfg.ArtifactConfirmSpan}}
	fn(x)
	if len(x.sigs) == 0 && len(x.derived) == 0 {
		p.dirty = true
		return Result{}, nil
	}
	ts, err := e.commit(ctx, pid, p.token, p.st, x.sigs, x.derived)
	if err != nil {
		p.loaded, p.st = false, nil
		return Result{}, err
	}
	p.dirty = false
	e.cfg.Alarms.Notify(ctx, ts)
	return Result{Derived: x.derived, Transitions: ts}, nil
}

func (e *Engine) commit(ctx context.Context, pid uuid.UUID, token int64, st *patientState, sigs []alarms.Signal, derived []Derived) ([]alarms.Transition, error) {
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("rules: patient %s: begin: %w", pid, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := e.fence(ctx, tx, pid, token); err != nil {
		return nil, err
	}
	var ts []alarms.Transition
	for _, s := range sigs {
		t, err := e.cfg.Alarms.Apply(ctx, tx, s)
		if err != nil {
			return nil, fmt.Errorf("rules: patient %s rule %s: %w", pid, s.RuleID, err)
		}
		ts = append(ts, t...)
	}
	now := e.now()
	for _, d := range derived {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("rules: new id: %w", err)
		}
		comp, err := json.Marshal(d.NEWS2)
		if err != nil {
			return nil, fmt.Errorf("rules: NEWS2 components: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO rules_news2 (id, patient_id, effective_at, total, band, components, rule_id, rule_version, recorded_at)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`, id, pid, d.EffectiveAt, d.NEWS2.Total, string(d.NEWS2.Band), comp, d.RuleID, d.RuleVersion, now); err != nil {
			return nil, fmt.Errorf("rules: record NEWS2: %w", err)
		}
		if _, err := e.cfg.Recorder.Record(ctx, tx, audit.Event{Time: now, Actor: engineActor, Action: "observation.derived",
			Object: audit.Object{Type: "news2", ID: id.String()}, Outcome: audit.OutcomeSuccess,
			Payload: map[string]any{"patient_id": pid, "code": CodeNEWS2, "effective_at": d.EffectiveAt, "rule_id": d.RuleID,
				"rule_version": d.RuleVersion, "components": d.NEWS2}}); err != nil {
			return nil, fmt.Errorf("rules: record NEWS2: %w", err)
		}
	}
	if err := writeState(ctx, tx, pid, st, now); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("rules: patient %s: commit: %w", pid, err)
	}
	return ts, nil
}

func writeState(ctx context.Context, tx pgx.Tx, pid uuid.UUID, st *patientState, now time.Time) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("rules: encode state of patient %s: %w", pid, err)
	}
	through := st.Through
	if through.IsZero() {
		through = st.LastSeen
	}
	if _, err := tx.Exec(ctx, `INSERT INTO rules_patient_state (patient_id, evaluated_through, state, updated_at)
		VALUES ($1,$2,$3,$4) ON CONFLICT (patient_id) DO UPDATE SET evaluated_through=$2, state=$3, updated_at=$4`,
		pid, through, b, now); err != nil {
		return fmt.Errorf("rules: checkpoint patient %s: %w", pid, err)
	}
	return nil
}

// entry returns the patient's entry, nil if the engine has none.
func (e *Engine) entry(pid uuid.UUID) *patientEntry {
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	return e.st.patients[pid]
}

// sortedIDs returns the ids of m in ascending byte order: the order in which the transactions
// that write several patients' checkpoints (persist) take their rows, so that
// two of them never wait for each other's rows.
func sortedIDs[V any](m map[uuid.UUID]V) []uuid.UUID {
	ids := make([]uuid.UUID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return bytes.Compare(ids[i][:], ids[j][:]) < 0 })
	return ids
}

func (e *Engine) entries() map[uuid.UUID]*patientEntry {
	e.st.mu.Lock()
	defer e.st.mu.Unlock()
	out := make(map[uuid.UUID]*patientEntry, len(e.st.patients))
	for id, p := range e.st.patients {
		out[id] = p
	}
	return out
}

func (e *Engine) tick(ctx context.Context) ([]alarms.Transition, error) {
	if err := e.reloadIfChanged(ctx); err != nil {
		return nil, err
	}
	if err := e.refreshSettings(ctx); err != nil {
		return nil, err
	}
	set := e.st.rules.Load()
	hasNoData := false
	for _, r := range set.list {
		hasNoData = hasNoData || r.Kind == KindNoData
	}
	if !hasNoData {
		return nil, nil
	}
	var all []alarms.Transition
	var errs []error
	now := e.cfg.Now()
	for id := range e.entries() {
		if !e.Owns(id) { // another replica's patient: its timers are the owner's
			continue
		}
		p, replayed, err := e.lockPatient(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, replayed.Transitions...)
		res, err := e.runAndCommit(ctx, id, p, func(x *runner) { x.silent(set.list, now) })
		p.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		all = append(all, res.Transitions...)
	}
	return all, errors.Join(errs...)
}

// checkpoint writes, in one transaction, the state of every patient evaluated since its last
// checkpoint, and settles the inbox rows evaluated since (persist).
func (e *Engine) checkpoint(ctx context.Context) error { return e.persist(ctx, true) }

func (e *Engine) releasePatient(ctx context.Context, by audit.Event, pid uuid.UUID, reason string) error {
	if strings.TrimSpace(reason) == "" {
		reason = "patient_released"
	}
	if by.Actor.Kind == "" {
		by.Actor = engineActor
	}
	if !e.Owns(pid) { // the owner releases it (lease_engine.go)
		return e.sendInbox(ctx, pid, "release", releaseBody{By: by, Reason: reason})
	}
	p, _, err := e.lockPatient(ctx, pid)
	if err != nil {
		return err
	}
	defer p.mu.Unlock()
	// A fresh state that keeps only where evaluation stands (so nothing already evaluated is
	// replayed) and the SpO2 scale; no last-seen time, so no-data stays quiet until new data.
	fresh := newPatientState()
	fresh.Through, fresh.SpO2Scale = p.st.Through, p.st.SpO2Scale
	fresh.OnOxygen, fresh.Charted, fresh.ChartedMaxAge = p.st.OnOxygen, p.st.Charted, p.st.ChartedMaxAge
	for c, t := range p.st.Codes {
		fresh.Codes[c] = t
	}
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("rules: release patient %s: %w", pid, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := e.fence(ctx, tx, pid, p.token); err != nil {
		return err
	}
	ts, err := e.cfg.Alarms.ResolvePatient(ctx, tx, pid, by, reason)
	if err != nil {
		return fmt.Errorf("rules: release patient %s: %w", pid, err)
	}
	now := e.now()
	if err := writeState(ctx, tx, pid, fresh, now); err != nil {
		return err
	}
	ev := by
	ev.ID, ev.Time = uuid.Nil, now
	ev.Action = "rules.patient_released"
	ev.Object = audit.Object{Type: "patient", ID: pid.String()}
	ev.Outcome = audit.OutcomeSuccess
	ev.Payload = map[string]any{"reason": reason, "alarms_resolved": len(ts)}
	if _, err := e.cfg.Recorder.Record(ctx, tx, ev); err != nil {
		return fmt.Errorf("rules: release patient %s: %w", pid, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("rules: release patient %s: commit: %w", pid, err)
	}
	p.st, p.dirty = fresh, false
	e.cfg.Alarms.Notify(ctx, ts)
	return nil
}

// lateWindow loads from History the stored observations around the samples of obs that are
// older than what was already evaluated of their code (nil when there are none), so that the
// runner re-evaluates the window they fall in.
func (e *Engine) lateWindow(ctx context.Context, pid uuid.UUID, st *patientState, rules []*Rule, obs []Observation) ([]Observation, error) {
	if e.cfg.History == nil {
		return nil, nil
	}
	var oldest time.Time
	for _, o := range obs {
		// A sample beyond the late horizon is flagged, not re-run: no window is loaded for it.
		if mark, ok := st.Codes[o.Code]; ok && o.PatientID == pid && o.EffectiveAt.Before(mark) &&
			!o.EffectiveAt.Before(mark.Add(-e.cfg.LateHorizon)) && (oldest.IsZero() || o.EffectiveAt.Before(oldest)) {
			oldest = o.EffectiveAt
		}
	}
	if oldest.IsZero() {
		return nil, nil
	}
	hist, err := e.cfg.History.ObservationsSince(ctx, pid, oldest.Add(-maxLookback(rules)-time.Microsecond), e.cfg.ReplayLimit)
	if err != nil {
		return nil, fmt.Errorf("rules: patient %s: window of late samples: %w", pid, err)
	}
	return hist, nil
}

// loadSettings reads the patient's rule settings (SpO2 scale, documented oxygen) and its
// ward's NEWS2 settings (parameters charted by hand) into st.
func (e *Engine) loadSettings(ctx context.Context, pid uuid.UUID, st *patientState) error {
	var scale int
	var onO2 *bool
	err := e.cfg.Pool.QueryRow(ctx, `SELECT spo2_scale, on_oxygen FROM rules_patient_settings WHERE patient_id=$1`, pid).Scan(&scale, &onO2)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		scale = 1
	case err != nil:
		return fmt.Errorf("rules: load settings of patient %s: %w", pid, err)
	}
	st.SpO2Scale, st.OnOxygen = scale, onO2
	var charted []string
	var maxAge int64
	err = e.cfg.Pool.QueryRow(ctx, `SELECT w.charted, w.charted_max_age_seconds FROM core_patients p
		JOIN rules_ward_settings w ON w.ward_id = p.ward_id WHERE p.id=$1`, pid).Scan(&charted, &maxAge)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		st.Charted, st.ChartedMaxAge = nil, 0
	case err != nil:
		return fmt.Errorf("rules: load ward settings of patient %s: %w", pid, err)
	default:
		st.Charted = map[string]bool{}
		for _, c := range charted {
			st.Charted[c] = true
		}
		st.ChartedMaxAge = time.Duration(maxAge) * time.Second
	}
	return nil
}

// refreshSettings re-reads, in one query, the settings of every patient in memory (SpO2
// scale, documented oxygen, the NEWS2 settings of the ward the patient is in now), so that a
// patient moved to another ward, or a setting changed by another process, takes effect at the
// next Tick.
func (e *Engine) refreshSettings(ctx context.Context) error {
	entries := e.entries()
	if len(entries) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, 0, len(entries))
	for id := range entries {
		ids = append(ids, id)
	}
	rows, err := e.cfg.Pool.Query(ctx, `SELECT p.id, coalesce(s.spo2_scale, 1), s.on_oxygen, w.charted, coalesce(w.charted_max_age_seconds, 0)
		FROM core_patients p
		LEFT JOIN rules_patient_settings s ON s.patient_id = p.id
		LEFT JOIN rules_ward_settings w ON w.ward_id = p.ward_id
		WHERE p.id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("rules: refresh settings: %w", err)
	}
	type setting struct {
		id      uuid.UUID
		scale   int
		onO2    *bool
		charted []string
		maxAge  int64
	}
	var got []setting
	for rows.Next() { // read all first: no patient lock is taken while a connection is held
		var x setting
		if err := rows.Scan(&x.id, &x.scale, &x.onO2, &x.charted, &x.maxAge); err != nil {
			rows.Close()
			return fmt.Errorf("rules: refresh settings: %w", err)
		}
		got = append(got, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("rules: refresh settings: %w", err)
	}
	for _, x := range got {
		p := entries[x.id]
		p.mu.Lock()
		if p.loaded {
			st := p.st
			st.SpO2Scale, st.OnOxygen, st.ChartedMaxAge, st.Charted = x.scale, x.onO2, time.Duration(x.maxAge)*time.Second, nil
			if len(x.charted) > 0 {
				st.Charted = make(map[string]bool, len(x.charted))
				for _, c := range x.charted {
					st.Charted[c] = true
				}
			}
		}
		p.mu.Unlock()
	}
	return nil
}
