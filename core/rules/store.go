package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/rowdigest"
	"github.com/vigilhealth/vigil/core/alarms"
)

var ruleIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Validate reports whether r is a well-formed rule definition (ErrInvalidRule otherwise).
func (r *Rule) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: rule %q: %s", ErrInvalidRule, r.ID, fmt.Sprintf(format, args...))
	}
	if !ruleIDRE.MatchString(r.ID) {
		return bad("id must match %s", ruleIDRE)
	}
	if strings.TrimSpace(r.Name) == "" {
		return bad("name is empty")
	}
	if strings.TrimSpace(r.Reason) == "" {
		return bad("reason is empty: say why this version exists")
	}
	set := 0
	for _, p := range []bool{r.Threshold != nil, r.Rate != nil, r.NEWS2 != nil, r.Anomaly != nil, r.NoData != nil} {
		if p {
			set++
		}
	}
	if set != 1 {
		return bad("exactly one parameter block must be set, got %d", set)
	}
	finite := func(vs ...float64) bool {
		for _, v := range vs {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
		return true
	}
	dir := func(d Direction) bool { return d == Above || d == Below }
	switch r.Kind {
	case KindThreshold:
		p := r.Threshold
		if p == nil {
			return bad("kind threshold needs threshold parameters")
		}
		if p.Code == "" || !dir(p.Direction) || len(p.Levels) == 0 || p.Hysteresis < 0 || p.MinDuration < 0 || !finite(p.Hysteresis) || p.WorsenBy < 0 || !finite(p.WorsenBy) {
			return bad("threshold needs a code, direction above|below, at least one level, hysteresis >= 0, min_duration >= 0")
		}
		for i, l := range p.Levels {
			if !l.Severity.Valid() || !finite(l.Limit) {
				return bad("level %d: invalid severity or limit", i)
			}
			if i > 0 {
				prev := p.Levels[i-1]
				if l.Severity <= prev.Severity {
					return bad("levels must be in increasing severity")
				}
				if p.Direction == Above && l.Limit <= prev.Limit || p.Direction == Below && l.Limit >= prev.Limit {
					return bad("more severe levels must be further out (above: higher limits, below: lower)")
				}
			}
		}
	case KindRate:
		p := r.Rate
		if p == nil {
			return bad("kind rate needs rate parameters")
		}
		if p.Code == "" || !dir(p.Direction) || !(p.MaxChange > 0) || !finite(p.MaxChange) || p.Window <= 0 || p.Hold < 0 || !p.Severity.Valid() {
			return bad("rate needs a code, direction, max_change > 0, window > 0, hold >= 0, a severity")
		}
	case KindNEWS2:
		if r.NEWS2 == nil || r.NEWS2.MaxAge <= 0 || r.NEWS2.Hold < 0 || r.NEWS2.IncompleteAfter < 0 || r.NEWS2.WorsenBy < 0 {
			return bad("news2 needs max_age > 0, hold >= 0, incomplete_after >= 0, worsen_by >= 0")
		}
	case KindAnomaly:
		p := r.Anomaly
		if p == nil {
			return bad("kind anomaly needs anomaly parameters")
		}
		if p.Code == "" || !(p.Alpha > 0 && p.Alpha < 1) || !(p.Z > 0) || !finite(p.Z, p.MinStdDev) || p.Warmup < 1 || p.ClearAfter < 1 || p.MinStdDev < 0 || !p.Severity.Valid() {
			return bad("anomaly needs a code, 0 < alpha < 1, z > 0, warmup >= 1, clear_after >= 1, min_stddev >= 0, a severity")
		}
	case KindNoData:
		if r.NoData == nil || r.NoData.Silence <= 0 || !r.NoData.Severity.Valid() {
			return bad("nodata needs silence > 0 and a severity")
		}
	default:
		return bad("unknown kind %q", r.Kind)
	}
	return nil
}

// definition is the kind-specific part stored as JSON.
func (r *Rule) definition() any {
	switch r.Kind {
	case KindThreshold:
		return r.Threshold
	case KindRate:
		return r.Rate
	case KindNEWS2:
		return r.NEWS2
	case KindAnomaly:
		return r.Anomaly
	case KindNoData:
		return r.NoData
	}
	return nil
}

func (r *Rule) setDefinition(b []byte) error {
	var target any
	switch r.Kind {
	case KindThreshold:
		r.Threshold = &ThresholdParams{}
		target = r.Threshold
	case KindRate:
		r.Rate = &RateParams{}
		target = r.Rate
	case KindNEWS2:
		r.NEWS2 = &NEWS2Params{}
		target = r.NEWS2
	case KindAnomaly:
		r.Anomaly = &AnomalyParams{}
		target = r.Anomaly
	case KindNoData:
		r.NoData = &NoDataParams{}
		target = r.NoData
	default:
		return fmt.Errorf("rule %s: unknown kind %q", r.ID, r.Kind)
	}
	if err := json.Unmarshal(b, target); err != nil {
		return fmt.Errorf("rule %s v%d: definition: %w", r.ID, r.Version, err)
	}
	return nil
}

const ruleCols = `rule_id, version, name, kind, enabled, definition, created_at, created_by, reason`

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func queryRules(ctx context.Context, q querier, sql string, args ...any) ([]Rule, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query rules: %w", err)
	}
	defer rows.Close()
	out := []Rule{}
	for rows.Next() {
		var r Rule
		var def []byte
		if err := rows.Scan(&r.ID, &r.Version, &r.Name, &r.Kind, &r.Enabled, &def, &r.CreatedAt, &r.CreatedBy, &r.Reason); err != nil {
			return nil, fmt.Errorf("scan rule: %w", err)
		}
		r.CreatedAt = r.CreatedAt.UTC()
		if err := r.setDefinition(def); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query rules: %w", err)
	}
	return out, nil
}

func (e *Engine) rules(ctx context.Context) ([]Rule, error) {
	return queryRules(ctx, e.cfg.Pool, `SELECT DISTINCT ON (rule_id) `+ruleCols+` FROM rules_versions ORDER BY rule_id, version DESC`)
}

func (e *Engine) versions(ctx context.Context, id string) ([]Rule, error) {
	rs, err := queryRules(ctx, e.cfg.Pool, `SELECT `+ruleCols+` FROM rules_versions WHERE rule_id=$1 ORDER BY version`, id)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("rule %q: %w", id, ErrRuleNotFound)
	}
	return rs, nil
}

func (e *Engine) now() time.Time { return e.cfg.Now().UTC().Truncate(time.Microsecond) }

func (e *Engine) createVersion(ctx context.Context, by audit.Event, r Rule) (Rule, error) {
	base := r.Version
	r.CreatedAt = e.now()
	r.CreatedBy = by.Actor.ID
	if r.CreatedBy == "" {
		r.CreatedBy = "unknown"
	}
	if err := r.Validate(); err != nil {
		return Rule{}, e.rejectRule(ctx, by, r, "invalid_rule", err)
	}
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return Rule{}, fmt.Errorf("create rule version: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('vigil.rules:' || $1))`, r.ID); err != nil {
		return Rule{}, fmt.Errorf("create rule version: lock: %w", err)
	}
	var latest int
	var kind string
	err = tx.QueryRow(ctx, `SELECT version, kind FROM rules_versions WHERE rule_id=$1 ORDER BY version DESC LIMIT 1`, r.ID).Scan(&latest, &kind)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Rule{}, fmt.Errorf("create rule version: %w", err)
	}
	if base != latest {
		_ = tx.Rollback(ctx)
		return Rule{}, e.rejectRule(ctx, by, r, "version_conflict",
			fmt.Errorf("%w: rule %q is at version %d, the change was based on %d", ErrVersionConflict, r.ID, latest, base))
	}
	if latest > 0 && Kind(kind) != r.Kind {
		_ = tx.Rollback(ctx)
		return Rule{}, e.rejectRule(ctx, by, r, "invalid_rule",
			fmt.Errorf("%w: rule %q is a %s rule; a version cannot change its kind to %s", ErrInvalidRule, r.ID, kind, r.Kind))
	}
	r.Version = latest + 1
	def, err := json.Marshal(r.definition())
	if err != nil {
		return Rule{}, fmt.Errorf("create rule version: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO rules_versions (`+ruleCols+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`,
		r.ID, r.Version, r.Name, string(r.Kind), r.Enabled, def, r.CreatedAt, r.CreatedBy, r.Reason); err != nil {
		return Rule{}, fmt.Errorf("create rule version: %w", err)
	}
	ev := by
	ev.ID, ev.Time = uuid.Nil, r.CreatedAt
	ev.Action = "rule.version_created"
	ev.Object = audit.Object{Type: "rule", ID: r.ID}
	ev.Outcome = audit.OutcomeSuccess
	ev.Reason = ""
	ev.Payload = map[string]any{"version": r.Version, "previous_version": latest, "name": r.Name, "kind": r.Kind,
		"enabled": r.Enabled, "definition": json.RawMessage(def), "reason": r.Reason}
	if _, err := e.cfg.Recorder.Record(ctx, tx, ev); err != nil {
		return Rule{}, fmt.Errorf("create rule version: %w", err)
	}
	// Disabling a rule resolves its open alarms: nothing would ever clear them otherwise.
	var ts []alarms.Transition
	if !r.Enabled {
		if ts, err = e.cfg.Alarms.ResolveRule(ctx, tx, r.ID, by, "rule_disabled"); err != nil {
			return Rule{}, fmt.Errorf("create rule version: %w", err)
		}
		if r.Kind == KindNEWS2 { // and its incomplete condition
			inc, err := e.cfg.Alarms.ResolveRule(ctx, tx, r.ID+"-incomplete", by, "rule_disabled")
			if err != nil {
				return Rule{}, fmt.Errorf("create rule version: %w", err)
			}
			ts = append(ts, inc...)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return Rule{}, fmt.Errorf("create rule version: commit: %w", err)
	}
	e.installRule(r)
	e.cfg.Alarms.Notify(ctx, ts)
	return r, nil
}

func (e *Engine) rejectRule(ctx context.Context, by audit.Event, r Rule, code string, err error) error {
	ev := e.event(by, "rule.version_created", audit.Object{Type: "rule", ID: r.ID})
	ev.Outcome = audit.OutcomeRejected
	ev.Reason = code
	ev.Payload = map[string]any{"error": err.Error(), "based_on_version": r.Version}
	return errors.Join(err, e.auditAlone(ctx, ev))
}

// auditAlone records ev on its own, group-committed (for rejections, which change nothing).
func (e *Engine) auditAlone(ctx context.Context, ev audit.Event) error {
	if _, err := e.cfg.Recorder.RecordNow(context.WithoutCancel(ctx), ev); err != nil {
		return fmt.Errorf("audit rejection: %w", err)
	}
	return nil
}

func (e *Engine) setSpO2Scale(ctx context.Context, by audit.Event, pid uuid.UUID, scale int, reason string) error {
	ev := e.event(by, "rules.spo2_scale_set", audit.Object{Type: "patient", ID: pid.String()})
	if (scale != 1 && scale != 2) || strings.TrimSpace(reason) == "" || pid == uuid.Nil {
		err := fmt.Errorf("%w: SpO2 scale must be 1 or 2, with a reason, for a patient", ErrInvalidRule)
		ev.Outcome, ev.Reason = audit.OutcomeRejected, "invalid_spo2_scale"
		ev.Payload = map[string]any{"scale": scale}
		return errors.Join(err, e.auditAlone(ctx, ev))
	}
	return e.setPatientSetting(ctx, ev, pid, "set SpO2 scale", `INSERT INTO rules_patient_settings (patient_id, spo2_scale, updated_at, updated_by)
		VALUES ($1,$2,$3,$4) ON CONFLICT (patient_id) DO UPDATE SET spo2_scale=$2, updated_at=$3, updated_by=$4`, scale,
		func(st *patientState) map[string]any {
			return map[string]any{"scale": scale, "previous_scale": st.SpO2Scale, "reason": reason}
		},
		func(st *patientState) { st.SpO2Scale = scale })
}

// event is the template by as an event of action on obj: no id yet, the engine's time, and
// the engine as the actor when by names none.
func (e *Engine) event(by audit.Event, action string, obj audit.Object) audit.Event {
	ev := by
	ev.ID, ev.Time = uuid.Nil, e.now()
	ev.Action, ev.Object = action, obj
	if ev.Actor.Kind == "" {
		ev.Actor = engineActor
	}
	return ev
}

// setPatientSetting writes one of a patient's rule settings once it is checked: in one
// transaction, the upsert of its rules_patient_settings row ($1 the patient, $2 value, $3 the
// event's time, $4 its actor), the audit event ev with payload (given the patient's state
// before the change) and the note to the replica that may own the patient; once committed,
// apply changes the state in memory. what names the action in errors.
func (e *Engine) setPatientSetting(ctx context.Context, ev audit.Event, pid uuid.UUID, what, upsert string, value any,
	payload func(*patientState) map[string]any, apply func(*patientState)) error {
	p, _, err := e.lockPatient(ctx, pid)
	if err != nil {
		return err
	}
	defer p.mu.Unlock()
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, upsert, pid, value, ev.Time, ev.Actor.ID); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	if err := stampSetting(ctx, tx, &ev, payload(p.st), rowdigest.PatientRuleSettings, pid); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if _, err := e.cfg.Recorder.Record(ctx, tx, ev); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := e.settingsChanged(ctx, tx, pid); err != nil { // another replica's patient: tell it
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	apply(p.st)
	p.dirty = true
	return nil
}

// stampSetting ties the settings row key of spec (a patient's or a ward's) to ev
// (audit/rowdigest): the row gets ev's id and the digest of its audited content, and ev's
// payload (payload, to which the digest is added) commits to it, so that `vigil audit verify`
// finds a scale, an oxygen flag or a ward's charted parameters changed behind the system's
// back. Call it in tx after the upsert and before recording ev.
func stampSetting(ctx context.Context, tx pgx.Tx, ev *audit.Event, payload map[string]any, spec rowdigest.Spec, key uuid.UUID) error {
	if ev.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("event id: %w", err)
		}
		ev.ID = id
	}
	ds := rowdigest.Digests{}
	if err := ds.Stamp(ctx, tx, spec, key.String(), ev.ID); err != nil {
		return err
	}
	payload[rowdigest.PayloadKey] = ds
	ev.Payload = payload
	return nil
}

// news2ParamNames are the parameter names a ward may chart by hand (SetWardNEWS2).
var news2ParamNames = map[string]bool{"rr": true, "spo2": true, "sbp": true, "hr": true, "temp": true, "acvpu": true, "fio2": true, "o2flow": true}

func (e *Engine) setOxygen(ctx context.Context, by audit.Event, pid uuid.UUID, onOxygen *bool, reason string) error {
	ev := e.event(by, "rules.oxygen_set", audit.Object{Type: "patient", ID: pid.String()})
	if strings.TrimSpace(reason) == "" || pid == uuid.Nil {
		err := fmt.Errorf("%w: documenting oxygen needs a patient and a reason", ErrInvalidRule)
		ev.Outcome, ev.Reason = audit.OutcomeRejected, "invalid_oxygen_setting"
		return errors.Join(err, e.auditAlone(ctx, ev))
	}
	return e.setPatientSetting(ctx, ev, pid, "set oxygen", `INSERT INTO rules_patient_settings (patient_id, spo2_scale, on_oxygen, updated_at, updated_by)
		VALUES ($1,1,$2,$3,$4) ON CONFLICT (patient_id) DO UPDATE SET on_oxygen=$2, updated_at=$3, updated_by=$4`, onOxygen,
		func(st *patientState) map[string]any {
			return map[string]any{"on_oxygen": onOxygen, "previous": st.OnOxygen, "reason": reason}
		},
		func(st *patientState) { st.OnOxygen = onOxygen })
}

// WardNEWS2Settings are a ward's own NEWS2 settings: the parameters it charts by hand, how
// long a charted value counts, and when and by whom (an actor id) they were last set.
type WardNEWS2Settings struct {
	WardID    uuid.UUID
	Charted   []string
	MaxAge    time.Duration
	UpdatedAt time.Time
	UpdatedBy string
}

func (e *Engine) wardNEWS2Settings(ctx context.Context) (map[uuid.UUID]WardNEWS2Settings, error) {
	rows, err := e.cfg.Pool.Query(ctx, "SELECT ward_id, charted, charted_max_age_seconds, updated_at, updated_by FROM rules_ward_settings")
	if err != nil {
		return nil, fmt.Errorf("ward NEWS2 settings: %w", err)
	}
	out := map[uuid.UUID]WardNEWS2Settings{}
	var w WardNEWS2Settings
	var secs int64
	_, err = pgx.ForEachRow(rows, []any{&w.WardID, &w.Charted, &secs, &w.UpdatedAt, &w.UpdatedBy}, func() error {
		w.MaxAge = time.Duration(secs) * time.Second
		out[w.WardID] = w
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ward NEWS2 settings: %w", err)
	}
	return out, nil
}

// setWardNEWS2 stores a ward's settings; with since, only if they were last set at *since
// (zero: never), else ErrVersionConflict (audited as a rejection, nothing stored).
func (e *Engine) setWardNEWS2(ctx context.Context, by audit.Event, wardID uuid.UUID, charted []string, maxAge time.Duration, reason string, since *time.Time) error {
	ev := e.event(by, "rules.ward_news2_set", audit.Object{Type: "ward", ID: wardID.String()})
	ok := wardID != uuid.Nil && strings.TrimSpace(reason) != "" && maxAge >= time.Minute && maxAge <= 24*time.Hour
	for _, c := range charted {
		ok = ok && news2ParamNames[c]
	}
	if !ok {
		err := fmt.Errorf("%w: ward NEWS2 settings need a ward, a reason, charted parameters among rr, spo2, sbp, hr, temp, acvpu, fio2, o2flow and a charted max age between 1m and 24h", ErrInvalidRule)
		ev.Outcome, ev.Reason = audit.OutcomeRejected, "invalid_ward_settings"
		ev.Payload = map[string]any{"charted": charted, "charted_max_age_seconds": maxAge.Seconds()}
		return errors.Join(err, e.auditAlone(ctx, ev))
	}
	if charted == nil {
		charted = []string{}
	}
	tx, err := e.cfg.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("set ward NEWS2: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Without since: insert or overwrite. With since: insert only if the ward has no settings
	// (since is zero), or overwrite only the row last set at since — one statement, so a
	// concurrent change makes it affect no row.
	q := `INSERT INTO rules_ward_settings (ward_id, charted, charted_max_age_seconds, updated_at, updated_by)
		VALUES ($1,$2,$3,$4,$5) ON CONFLICT (ward_id) DO UPDATE SET charted=$2, charted_max_age_seconds=$3, updated_at=$4, updated_by=$5`
	args := []any{wardID, charted, int64(maxAge / time.Second), ev.Time, ev.Actor.ID}
	switch {
	case since != nil && since.IsZero():
		q = `INSERT INTO rules_ward_settings (ward_id, charted, charted_max_age_seconds, updated_at, updated_by)
			VALUES ($1,$2,$3,$4,$5) ON CONFLICT (ward_id) DO NOTHING`
	case since != nil:
		q += " WHERE rules_ward_settings.updated_at = $6"
		args = append(args, since.UTC())
	}
	tag, err := tx.Exec(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("set ward NEWS2: %w", err)
	}
	if tag.RowsAffected() == 0 {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		ev.Outcome, ev.Reason = audit.OutcomeRejected, "stale_settings"
		ev.Payload = map[string]any{"charted": charted, "charted_max_age_seconds": maxAge.Seconds(), "reason": reason, "since": since.UTC()}
		return errors.Join(fmt.Errorf("set ward NEWS2: %w: the ward's settings changed since %s", ErrVersionConflict, since.UTC().Format(time.RFC3339Nano)),
			e.auditAlone(ctx, ev))
	}
	ev.Outcome = audit.OutcomeSuccess
	if err := stampSetting(ctx, tx, &ev, map[string]any{"charted": charted, "charted_max_age_seconds": maxAge.Seconds(), "reason": reason},
		rowdigest.WardNEWS2Settings, wardID); err != nil {
		return fmt.Errorf("set ward NEWS2: %w", err)
	}
	if _, err := e.cfg.Recorder.Record(ctx, tx, ev); err != nil {
		return fmt.Errorf("set ward NEWS2: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("set ward NEWS2: commit: %w", err)
	}
	// Patients in memory take the ward's settings at once.
	var errs []error
	for id, p := range e.entries() {
		p.mu.Lock()
		if p.loaded {
			errs = append(errs, e.loadSettings(ctx, id, p.st))
		}
		p.mu.Unlock()
	}
	return errors.Join(errs...)
}
