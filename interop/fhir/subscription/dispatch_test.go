package subscription_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/fhir/api"
	"github.com/vigilhealth/vigil/interop/fhir/subscription"
)

// idOnlyPolicy is the Policy of a test whose Subscriptions are all id-only: the dispatcher
// must never consult it.
type idOnlyPolicy struct{ t *testing.T }

func (p idOnlyPolicy) MayRead(context.Context, subscription.Owner, string, uuid.UUID) (bool, error) {
	p.t.Error("Policy.MayRead consulted for an id-only Subscription")
	return false, nil
}

func (p idOnlyPolicy) MayReadAll(context.Context, subscription.Owner, string) (bool, error) {
	p.t.Error("Policy.MayReadAll consulted for an id-only Subscription")
	return false, nil
}

// Two replicas on one database, each running the dispatcher over its own hub (relayed
// through the database, as vigil serve runs them): every alarm is notified exactly once per
// Subscription, by the replica that published it, whichever replica that is.
// Verifies: REQ-INT-039
func TestDispatchOncePerDatabase(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := audittest.Recorder(t, pool, nil)
	resources, err := api.New(api.Config{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "test"}}
	owner := subscription.Owner{Kind: audit.ActorUser, ID: uuid.New(), Subject: "user:x"}
	replica := func() (*core.Hub, *subscription.Service) {
		hub := core.NewHub(core.HubConfig{})
		relay, err := core.StartHubRelay(ctx, hub, core.HubRelayConfig{Pool: pool, Poll: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		cs, err := core.New(core.Config{Pool: pool, Recorder: rec})
		if err != nil {
			t.Fatal(err)
		}
		svc, err := subscription.New(subscription.Config{Pool: pool, Hub: hub, Webhooks: cs, Resources: resources,
			Policy: idOnlyPolicy{t}, Recorder: rec, Refresh: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = svc.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; _ = relay.Close(context.Background()); hub.Close() })
		return hub, svc
	}
	ha, sa := replica()
	hb, _ := replica()
	p := uuid.New()
	s, _, err := sa.Create(ctx, by, owner, "https://vigil.example/fhir/R4",
		[]byte(sub(subscription.TopicAlarmFlag.URL, "patient="+p.String(), `{"type":"rest-hook","endpoint":"https://ehr.example/hook"}`)))
	if err != nil {
		t.Fatal(err)
	}
	alarm := func() json.RawMessage {
		b, err := json.Marshal(alarms.Transition{Kind: alarms.Opened, Alarm: alarms.Alarm{ID: uuid.New(), PatientID: p, Severity: alarms.SeverityHigh, PeakSeverity: alarms.SeverityHigh}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	count := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, subscription.EventType(s.ID)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	wait := func(n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d deliveries after a minute", n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Each replica sees all three events (its own and, through the database, the other's)
	// in the same order; once the third is notified, both have handled the first two.
	ha.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	hb.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	ha.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	wait(3)
	hb.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	wait(4)
	if n := count(); n != 4 {
		t.Errorf("deliveries = %d for 4 alarms on 2 replicas, want 4 (each once)", n)
	}
	got, err := sa.Get(ctx, s.ID)
	if err != nil || got.Events != 4 {
		t.Errorf("events since start = %d, %v; want 4", got.Events, err)
	}
}
