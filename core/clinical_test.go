package core_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
)

// With the real rules engine and alarm service on the ingest path: uploads whose SpO2 stays
// below 88 % for 30 s open an alarm whose transition reaches the hub after commit; an
// artifact does not; discharging the patient resolves it.
// Verifies: REQ-CORE-014, REQ-CORE-012, REQ-CORE-004
func TestIngestToAlarmAndDischarge(t *testing.T) {
	t.Parallel()
	hub := core.NewHub(core.HubConfig{})
	handoff := obs.NewHandoff(obs.HandoffConfig{})
	var e *env
	var eng *rules.Engine
	e = newEnv(t, func(c *core.Config) {
		c.Hub = hub
		c.Now = time.Now
		c.Handoff = handoff // the engine drains it, as cmd/vigil wires it
		c.Release = core.PatientReleaser(releaser{&eng})
	})
	asvc, err := alarms.New(alarms.Config{Pool: e.pool, Recorder: e.rec, Notifier: hub})
	if err != nil {
		t.Fatal(err)
	}
	eng, err = rules.New(e.ctx, rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: asvc, History: e.svc, Handoff: handoff})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close(context.Background()) })
	sub := hub.Subscribe(core.Filter{})
	defer sub.Close()
	p := e.patient(t)
	start := time.Now().UTC().Truncate(time.Second).Add(-2 * time.Minute)
	spo2 := func(at time.Duration, v float64) {
		t.Helper()
		b := batch(p, core.Sample{Code: core.LOINCSpO2, Value: v, Unit: "%", Time: start.Add(at)})
		b.Provenance.ReceivedAt = time.Now()
		if _, err := e.svc.Ingest(e.ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	spo2(0, 87)
	spo2(20*time.Second, 40) // artifact (below the plausible 50 %): no severity change
	spo2(40*time.Second, 87)
	ev := <-sub.C
	if ev.Type != "alarm.opened" || ev.PatientID != p {
		t.Fatalf("hub event = %s for %s, want alarm.opened for %s", ev.Type, ev.PatientID, p)
	}
	if err := handoff.Flush(e.ctx); err != nil { // the rules have evaluated every upload
		t.Fatal(err)
	}
	open, err := asvc.OpenAlarms(e.ctx, p)
	var low []alarms.Alarm
	for _, a := range open { // besides the partial NEWS2 (SpO2 87 alone scores 3)
		if a.RuleID == "spo2-low" {
			low = append(low, a)
		}
	}
	if err != nil || len(low) != 1 || low[0].Severity != alarms.SeverityHigh {
		t.Fatalf("OpenAlarms() = %+v, %v; want one spo2-low high (the isolated artifact ignored)", open, err)
	}
	if err := e.svc.DischargePatient(e.ctx, clinician, p); err != nil {
		t.Fatal(err)
	}
	for ev = <-sub.C; ev.Type == "alarm.opened"; ev = <-sub.C { // the other alarm's opening
	}
	if ev.Type != "alarm.resolved" {
		t.Errorf("hub event after discharge = %s, want alarm.resolved", ev.Type)
	}
	if open, _ := asvc.OpenAlarms(e.ctx, p); len(open) != 0 {
		t.Errorf("open alarms after discharge = %d, want 0", len(open))
	}
}

type releaser struct{ eng **rules.Engine }

func (r releaser) ReleasePatient(ctx context.Context, by audit.Event, p uuid.UUID, reason string) error {
	return (*r.eng).ReleasePatient(ctx, by, p, reason)
}
