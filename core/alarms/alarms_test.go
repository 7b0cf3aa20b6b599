package alarms_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// recorder is a Notifier that keeps what it was given.
type recorder struct {
	mu sync.Mutex
	ts []alarms.Transition
}

func (r *recorder) AlarmTransition(_ context.Context, t alarms.Transition) {
	r.mu.Lock()
	r.ts = append(r.ts, t)
	r.mu.Unlock()
}

func (r *recorder) kinds() []alarms.TransitionKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]alarms.TransitionKind, len(r.ts))
	for i, t := range r.ts {
		out[i] = t.Kind
	}
	return out
}

type fixture struct {
	pool *pgxpool.Pool
	svc  *alarms.Service
	clk  *testclock.Clock
	rec  *recorder
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pool := testdb.New(t)
	clk := testclock.New(time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC))
	rec := &recorder{}
	svc, err := alarms.New(alarms.Config{
		Pool: pool, Recorder: audittest.Recorder(t, pool, nil), Notifier: rec, Now: clk.Now,
		EscalateAfter: 5 * time.Minute, MaxTier: 2,
		ReminderFirst: 2 * time.Minute, ReminderFactor: 0.5, ReminderMin: 30 * time.Second,
		MaxSilence: 30 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{pool: pool, svc: svc, clk: clk, rec: rec}
}

// signal applies sig in its own transaction and notifies, as the rules engine does.
func (f *fixture) signal(t *testing.T, sig alarms.Signal) []alarms.Transition {
	t.Helper()
	ctx := context.Background()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := f.svc.Apply(ctx, tx, sig)
	if err != nil {
		_ = tx.Rollback(ctx)
		t.Fatalf("Apply(%+v) error %v", sig, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f.svc.Notify(ctx, ts)
	return ts
}

func (f *fixture) tick(t *testing.T) []alarms.TransitionKind {
	t.Helper()
	ts, err := f.svc.Tick(context.Background())
	if err != nil {
		t.Fatalf("Tick() error %v", err)
	}
	out := make([]alarms.TransitionKind, len(ts))
	for i, tr := range ts {
		out[i] = tr.Kind
	}
	return out
}

// auditCount counts audit events of an alarm by action and outcome.
func (f *fixture) auditCount(t *testing.T, id uuid.UUID, action string, outcome audit.Outcome) int {
	t.Helper()
	var n int
	err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_events
		WHERE object_type='alarm' AND object_id=$1 AND action=$2 AND outcome=$3`, id.String(), action, string(outcome)).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var nurse = audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "nurse-ana", AuthMethod: "password+totp"}, RequestID: "req-1"}

func raise(p uuid.UUID, sev alarms.Severity) alarms.Signal {
	return alarms.Signal{PatientID: p, RuleID: "hr-high", RuleVersion: 1, Raise: true, Severity: sev, Message: "HR high", Detail: map[string]any{"value": 130}}
}

func clear(p uuid.UUID) alarms.Signal {
	return alarms.Signal{PatientID: p, RuleID: "hr-high", RuleVersion: 1, Raise: false}
}

func equalKinds(a, b []alarms.TransitionKind) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// One open alarm per patient and rule; re-triggers update it; severity escalates and
// de-escalates; the condition clearing resolves it; a new raise after that opens a new alarm.
// Every transition is audited.
// Verifies: REQ-CORE-110, REQ-CORE-111, REQ-CORE-116, REQ-CORE-117
func TestSignalLifecycle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	p := uuid.New()
	steps := []struct {
		sig  alarms.Signal
		want alarms.TransitionKind
		sev  alarms.Severity
	}{
		{raise(p, alarms.SeverityMedium), alarms.Opened, alarms.SeverityMedium},
		{raise(p, alarms.SeverityMedium), alarms.Retriggered, alarms.SeverityMedium},
		{raise(p, alarms.SeverityHigh), alarms.SeverityEscalated, alarms.SeverityHigh},
		{raise(p, alarms.SeverityMedium), alarms.SeverityDeescalate, alarms.SeverityMedium},
		{clear(p), alarms.Resolved, alarms.SeverityMedium},
	}
	var id uuid.UUID
	for i, st := range steps {
		ts := f.signal(t, st.sig)
		if len(ts) != 1 || ts[0].Kind != st.want || ts[0].Alarm.Severity != st.sev {
			t.Fatalf("step %d: Apply() = %+v, want one %s at %s", i, ts, st.want, st.sev)
		}
		if i == 0 {
			id = ts[0].Alarm.ID
		} else if ts[0].Alarm.ID != id {
			t.Fatalf("step %d: alarm id %s, want the same alarm %s", i, ts[0].Alarm.ID, id)
		}
		if ts[0].AuditEventID == uuid.Nil {
			t.Errorf("step %d: transition without audit event", i)
		}
		f.clk.Advance(10 * time.Second)
	}
	a, err := f.svc.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != alarms.StateResolved || a.TriggerCount != 4 || a.PeakSeverity != alarms.SeverityHigh || a.ResolveReason != "condition_cleared" {
		t.Errorf("Get() = state %s triggers %d peak %s reason %q, want resolved 4 high condition_cleared", a.State, a.TriggerCount, a.PeakSeverity, a.ResolveReason)
	}
	for _, k := range []string{"opened", "retriggered", "severity_escalated", "severity_deescalated", "resolved"} {
		if n := f.auditCount(t, id, "alarm."+k, audit.OutcomeSuccess); n != 1 {
			t.Errorf("audit count alarm.%s = %d, want 1", k, n)
		}
	}
	// Clearing with nothing open is a no-op; raising again opens a new alarm.
	if ts := f.signal(t, clear(p)); len(ts) != 0 {
		t.Errorf("Apply(clear, nothing open) = %v, want nothing", ts)
	}
	ts := f.signal(t, raise(p, alarms.SeverityLow))
	if len(ts) != 1 || ts[0].Kind != alarms.Opened || ts[0].Alarm.ID == id {
		t.Fatalf("Apply(raise after resolve) = %+v, want a new alarm", ts)
	}
	list, err := f.svc.List(ctx, alarms.Filter{PatientID: p})
	if err != nil || len(list) != 2 {
		t.Fatalf("List(patient) = %d alarms, %v; want 2", len(list), err)
	}
	open, err := f.svc.OpenAlarms(ctx, p)
	if err != nil || len(open) != 1 {
		t.Fatalf("OpenAlarms() = %d, %v; want 1", len(open), err)
	}
	if got := f.rec.kinds(); len(got) != 6 {
		t.Errorf("notified %v, want 6 transitions", got)
	}
}

// Unacknowledged alarms escalate tier by tier every EscalateAfter, and remind at a decaying
// interval (2m, then 1m, then 30s floor); acknowledging stops both.
// Verifies: REQ-CORE-113, REQ-CORE-114, REQ-CORE-112
func TestEscalationAndReminders(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	p := uuid.New()
	id := f.signal(t, raise(p, alarms.SeverityHigh))[0].Alarm.ID

	type step struct {
		advance time.Duration
		want    []alarms.TransitionKind
	}
	R, E := alarms.Reminded, alarms.Escalated
	steps := []step{
		{119 * time.Second, nil},                          // t=1:59
		{1 * time.Second, []alarms.TransitionKind{R}},     // t=2:00 first reminder, next in 1m
		{59 * time.Second, nil},                           // t=2:59
		{1 * time.Second, []alarms.TransitionKind{R}},     // t=3:00, next in 30s
		{30 * time.Second, []alarms.TransitionKind{R}},    // t=3:30, floor 30s
		{30 * time.Second, []alarms.TransitionKind{R}},    // t=4:00
		{30 * time.Second, []alarms.TransitionKind{R}},    // t=4:30
		{30 * time.Second, []alarms.TransitionKind{E, R}}, // t=5:00 escalated to tier 1
	}
	for i, st := range steps {
		f.clk.Advance(st.advance)
		if got := f.tick(t); !equalKinds(got, st.want) {
			t.Fatalf("step %d: Tick() = %v, want %v", i, got, st.want)
		}
	}
	a, _ := f.svc.Get(ctx, id)
	if a.Tier != 1 || a.ReminderCount != 6 {
		t.Fatalf("after 5m: tier %d reminders %d, want 1 and 6", a.Tier, a.ReminderCount)
	}
	// A late tick catches up: at t=15:00 the alarm has been due at 10:00 (tier 2 = max).
	f.clk.Advance(10 * time.Minute)
	if got := f.tick(t); !equalKinds(got, []alarms.TransitionKind{E, R}) {
		t.Fatalf("late Tick() = %v, want one escalation (max tier) and one reminder", got)
	}
	a, _ = f.svc.Get(ctx, id)
	if a.Tier != 2 || a.NextEscalation != nil {
		t.Fatalf("tier %d next escalation %v, want 2 and none (max tier)", a.Tier, a.NextEscalation)
	}
	// Acknowledge: who and when; escalation and reminders stop.
	a, err := f.svc.Acknowledge(ctx, id, nurse, "at bedside")
	if err != nil {
		t.Fatal(err)
	}
	if a.State != alarms.StateAcknowledged || a.AckedBy != "nurse-ana" || a.AckedAt == nil || !a.AckedAt.Equal(f.clk.Now()) {
		t.Fatalf("Acknowledge() = %s by %q at %v, want acknowledged by nurse-ana now", a.State, a.AckedBy, a.AckedAt)
	}
	f.clk.Advance(time.Hour)
	if got := f.tick(t); len(got) != 0 {
		t.Fatalf("Tick() after acknowledge = %v, want nothing", got)
	}
	if n := f.auditCount(t, id, "alarm.reminder", audit.OutcomeSuccess); n != 7 {
		t.Errorf("audited reminders = %d, want 7", n)
	}
	if n := f.auditCount(t, id, "alarm.escalated", audit.OutcomeSuccess); n != 2 {
		t.Errorf("audited escalations = %d, want 2", n)
	}
	// Acknowledging twice is refused, and the refusal audited.
	if _, err := f.svc.Acknowledge(ctx, id, nurse, ""); !errors.Is(err, alarms.ErrConflict) {
		t.Errorf("Acknowledge(again) error %v, want ErrConflict", err)
	}
	if n := f.auditCount(t, id, "alarm.acknowledged", audit.OutcomeRejected); n != 1 {
		t.Errorf("audited rejected acknowledgements = %d, want 1", n)
	}
	// A worse condition re-activates the acknowledged alarm: it must be seen again.
	ts := f.signal(t, raise(p, alarms.SeverityCritical))
	if ts[0].Kind != alarms.SeverityEscalated || ts[0].Alarm.State != alarms.StateActive || ts[0].Alarm.AckedAt != nil {
		t.Fatalf("raise(critical) on acknowledged = %s %s, want severity_escalated and active", ts[0].Kind, ts[0].Alarm.State)
	}
	if got := f.tick(t); !equalKinds(got, []alarms.TransitionKind{R}) {
		t.Fatalf("Tick() after re-activation = %v, want an immediate reminder", got)
	}
}

// Silence mutes reminders with a reason until its expiry but is not acknowledgement: the
// alarm still escalates; when the silence expires reminders resume at once.
// Verifies: REQ-CORE-112, REQ-CORE-115
func TestSilence(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	p := uuid.New()
	id := f.signal(t, raise(p, alarms.SeverityMedium))[0].Alarm.ID

	bad := []struct {
		reason string
		d      time.Duration
		err    error
	}{
		{"", 5 * time.Minute, alarms.ErrInvalidRequest},
		{"procedure", 0, alarms.ErrInvalidRequest},
		{"procedure", 31 * time.Minute, alarms.ErrInvalidRequest},
	}
	for _, b := range bad {
		if _, err := f.svc.Silence(ctx, id, nurse, b.reason, b.d); !errors.Is(err, b.err) {
			t.Errorf("Silence(%q, %s) error %v, want %v", b.reason, b.d, err, b.err)
		}
	}
	if n := f.auditCount(t, id, "alarm.silenced", audit.OutcomeRejected); n != 3 {
		t.Errorf("audited rejected silences = %d, want 3", n)
	}
	a, err := f.svc.Silence(ctx, id, nurse, "patient repositioning", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != alarms.StateActive || a.SilenceReason != "patient repositioning" || !a.Silenced(f.clk.Now()) {
		t.Fatalf("Silence() = %+v, want active, silenced with reason", a)
	}
	f.clk.Advance(5 * time.Minute) // escalation due, reminder muted
	if got := f.tick(t); !equalKinds(got, []alarms.TransitionKind{alarms.Escalated}) {
		t.Fatalf("Tick() while silenced = %v, want escalation only", got)
	}
	f.clk.Advance(5 * time.Minute) // silence expires; escalation to tier 2 due too
	if got := f.tick(t); !equalKinds(got, []alarms.TransitionKind{alarms.SilenceExpired, alarms.Escalated, alarms.Reminded}) {
		t.Fatalf("Tick() at silence expiry = %v, want silence_expired, escalated, reminder", got)
	}
	a, _ = f.svc.Get(ctx, id)
	if a.SilencedUntil != nil || a.AckedAt != nil || a.State != alarms.StateActive {
		t.Errorf("after expiry: %+v, want not silenced, still unacknowledged", a)
	}
}

// Resolving by hand needs a reason, records who, and is final; unknown ids are ErrNotFound.
// Verifies: REQ-CORE-116, REQ-CORE-117
func TestManualResolve(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	p := uuid.New()
	id := f.signal(t, raise(p, alarms.SeverityLow))[0].Alarm.ID
	if _, err := f.svc.Resolve(ctx, id, nurse, "  "); !errors.Is(err, alarms.ErrInvalidRequest) {
		t.Errorf("Resolve(no reason) error %v, want ErrInvalidRequest", err)
	}
	a, err := f.svc.Resolve(ctx, id, nurse, "lead displaced, re-attached")
	if err != nil {
		t.Fatal(err)
	}
	if a.State != alarms.StateResolved || a.ResolvedBy != "nurse-ana" || a.ResolveReason != "lead displaced, re-attached" {
		t.Errorf("Resolve() = %+v, want resolved by nurse-ana with reason", a)
	}
	if _, err := f.svc.Resolve(ctx, id, nurse, "again"); !errors.Is(err, alarms.ErrConflict) {
		t.Errorf("Resolve(again) error %v, want ErrConflict", err)
	}
	if _, err := f.svc.Acknowledge(ctx, id, nurse, ""); !errors.Is(err, alarms.ErrConflict) {
		t.Errorf("Acknowledge(resolved) error %v, want ErrConflict", err)
	}
	missing := uuid.New()
	if _, err := f.svc.Get(ctx, missing); !errors.Is(err, alarms.ErrNotFound) {
		t.Errorf("Get(missing) error %v, want ErrNotFound", err)
	}
	if _, err := f.svc.Acknowledge(ctx, missing, nurse, ""); !errors.Is(err, alarms.ErrNotFound) {
		t.Errorf("Acknowledge(missing) error %v, want ErrNotFound", err)
	}
	if n := f.auditCount(t, missing, "alarm.acknowledged", audit.OutcomeRejected); n != 1 {
		t.Errorf("audited rejection for missing alarm = %d, want 1", n)
	}
	if n := f.auditCount(t, id, "alarm.resolved", audit.OutcomeSuccess); n != 1 {
		t.Errorf("audited resolutions = %d, want 1", n)
	}
}

// A transition in a rolled-back transaction leaves neither alarm nor audit event.
// Verifies: REQ-CORE-117
func TestApplyRollback(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	p := uuid.New()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := f.svc.Apply(ctx, tx, raise(p, alarms.SeverityHigh))
	if err != nil || len(ts) != 1 {
		t.Fatalf("Apply() = %v, %v", ts, err)
	}
	_ = tx.Rollback(ctx)
	list, _ := f.svc.List(ctx, alarms.Filter{PatientID: p})
	if len(list) != 0 {
		t.Errorf("List() after rollback = %d alarms, want 0", len(list))
	}
	if n := f.auditCount(t, ts[0].Alarm.ID, "alarm.opened", audit.OutcomeSuccess); n != 0 {
		t.Errorf("audit after rollback = %d, want 0", n)
	}
	if _, err := f.svc.Apply(ctx, nil, alarms.Signal{PatientID: p, RuleID: "x", Raise: true}); !errors.Is(err, alarms.ErrInvalidRequest) {
		t.Errorf("Apply(no severity) error %v, want ErrInvalidRequest", err)
	}
}

// A transition's JSON (what SSE and webhooks carry) uses one casing: the actor's keys too.
// Verifies: REQ-CORE-127
func TestTransitionJSONCasing(t *testing.T) {
	t.Parallel()
	tr := alarms.Transition{Kind: alarms.Worsened, Alarm: alarms.Alarm{Severity: alarms.SeverityHigh, PeakSeverity: alarms.SeverityHigh}, Actor: audit.Actor{Kind: audit.ActorService, ID: "vigil-rules", AuthMethod: "internal"}}
	b, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	actor, _ := m["actor"].(map[string]any)
	if actor["kind"] != "service" || actor["id"] != "vigil-rules" || actor["auth_method"] != "internal" || actor["Kind"] != nil || m["kind"] != "worsened" {
		t.Errorf("json.Marshal(Transition) = %s, want the actor as kind, id, auth_method", b)
	}
}

// A transition whose alarm has no peak severity (the zero value: not known) still encodes
// whole, with the field null, and decodes back to the zero value; a severity that is set
// keeps its name. The old encoding failed on the zero value, and the whole transition with it.
// Verifies: REQ-CORE-140
func TestTransitionJSONSeverityNotKnown(t *testing.T) {
	t.Parallel()
	id, pid := uuid.New(), uuid.New()
	tr := alarms.Transition{Kind: alarms.Opened, Alarm: alarms.Alarm{ID: id, PatientID: pid, RuleID: "hr-low",
		State: alarms.StateActive, Severity: alarms.SeverityHigh, Message: "HR 38/min"}}
	b, err := json.Marshal(tr)
	if err != nil {
		t.Fatalf("json.Marshal(transition with peak severity 0) = %v, want it encoded", err)
	}
	var m struct {
		Alarm map[string]any `json:"alarm"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Alarm["peak_severity"]; !ok || v != nil {
		t.Errorf("json.Marshal(transition).alarm.peak_severity = %v (present %v), want null", v, ok)
	}
	if m.Alarm["severity"] != "high" || m.Alarm["rule_id"] != "hr-low" || m.Alarm["message"] != "HR 38/min" {
		t.Errorf("json.Marshal(transition).alarm = %v, want severity high, rule hr-low, its message", m.Alarm)
	}
	var back alarms.Transition
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("json.Unmarshal(%s) = %v", b, err)
	}
	if back.Alarm.PeakSeverity != 0 || back.Alarm.Severity != alarms.SeverityHigh || back.Alarm.ID != id {
		t.Errorf("round trip = peak %d severity %s id %s, want 0, high, %s", back.Alarm.PeakSeverity, back.Alarm.Severity, back.Alarm.ID, id)
	}
	// Other invalid values stay errors, both ways.
	if _, err := json.Marshal(alarms.Alarm{Severity: 9}); err == nil {
		t.Error("json.Marshal(severity 9) = nil error, want an error")
	}
	var a alarms.Alarm
	for _, in := range []string{`{"severity":"extreme"}`, `{"severity":3}`} {
		if err := json.Unmarshal([]byte(in), &a); err == nil {
			t.Errorf("json.Unmarshal(%s) = nil error, want an error", in)
		}
	}
}

// A refusal of the lifecycle says whether its rejection event is committed: a RefusalError
// naming that event when it is, the bare refusal joined with the audit failure when the
// record failed (RefusalRecorded false), so a caller never takes a missing record as the
// request's one audit event. Both still wrap the refusal's kind (ErrConflict, …).
// Verifies: REQ-POR-084
func TestRefusalRecorded(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	id := f.signal(t, raise(uuid.New(), alarms.SeverityMedium))[0].Alarm.ID
	if _, err := f.svc.Acknowledge(ctx, id, nurse, ""); err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		what string
		do   func(*alarms.Service) error
		kind error
		code string
	}{
		{"acknowledge again", func(s *alarms.Service) error { _, err := s.Acknowledge(ctx, id, nurse, ""); return err },
			alarms.ErrConflict, "alarm_already_acknowledged"},
		{"silence without a reason", func(s *alarms.Service) error { _, err := s.Silence(ctx, id, nurse, "", time.Minute); return err },
			alarms.ErrInvalidRequest, "silence_reason_required"},
		{"resolve an unknown alarm", func(s *alarms.Service) error { _, err := s.Resolve(ctx, uuid.New(), nurse, "gone"); return err },
			alarms.ErrNotFound, "alarm_not_found"},
	}
	for _, r := range refusals {
		err := r.do(f.svc)
		var re *alarms.RefusalError
		if !errors.Is(err, r.kind) || !alarms.RefusalRecorded(err) || !errors.As(err, &re) || re.Code != r.code {
			t.Errorf("%s = %v, want a recorded refusal %s wrapping %v", r.what, err, r.code, r.kind)
			continue
		}
		var action, reason string
		if qerr := f.pool.QueryRow(ctx, `SELECT action, reason FROM audit_events WHERE id = $1 AND outcome = 'rejected'`, re.AuditEventID).
			Scan(&action, &reason); qerr != nil || reason != r.code {
			t.Errorf("%s: rejection event %s = %s %q, %v; want it committed with reason %s", r.what, re.AuditEventID, action, reason, qerr, r.code)
		}
	}
	// The same refusals over a recorder that cannot record.
	closed := audittest.Recorder(t, f.pool, nil)
	closed.Close()
	broken, err := alarms.New(alarms.Config{Pool: f.pool, Recorder: closed, Now: f.clk.Now, MaxSilence: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refusals {
		if err := r.do(broken); !errors.Is(err, r.kind) || alarms.RefusalRecorded(err) {
			t.Errorf("%s without its record = %v (recorded %v), want %v, not recorded", r.what, err, alarms.RefusalRecorded(err), r.kind)
		}
	}
}
