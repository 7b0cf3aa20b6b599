package subscription_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/internal/testclock"
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
// Verifies: REQ-INT-039, REQ-INT-048
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
	// The handshake is the first delivery, enqueued by Create.
	if n := count(); n != 1 {
		t.Fatalf("deliveries after Create = %d, want 1 (the handshake)", n)
	}
	// Each replica sees all three events (its own and, through the database, the other's)
	// in the same order; once the third is notified, both have handled the first two.
	ha.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	hb.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	ha.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	wait(1 + 3)
	hb.Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: alarm()})
	wait(1 + 4)
	if n := count(); n != 1+4 {
		t.Errorf("deliveries = %d for a handshake and 4 alarms on 2 replicas, want 5 (each once)", n)
	}
	got, err := sa.Get(ctx, s.ID)
	if err != nil || got.Events != 4 {
		t.Errorf("events since start = %d, %v; want 4", got.Events, err)
	}
}

// Heartbeats: a Subscription that asks for one every 10 s gets a heartbeat only when nothing
// was enqueued for it for 10 s — the handshake and each event notification count — and with
// two replicas calling Heartbeats each heartbeat is enqueued once. Each notification carries
// its type and the events since the Subscription's start.
// Verifies: REQ-INT-049
func TestHeartbeatsOncePerPeriod(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	rec := audittest.Recorder(t, pool, nil)
	resources, err := api.New(api.Config{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	clock := testclock.New(time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC))
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	replica := func() *subscription.Service {
		svc, err := subscription.New(subscription.Config{Pool: pool, Webhooks: cs, Resources: resources,
			Policy: idOnlyPolicy{t}, Recorder: rec, Refresh: time.Millisecond, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	a, b := replica(), replica()
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "test"}}
	owner := subscription.Owner{Kind: audit.ActorUser, ID: uuid.New(), Subject: "user:x"}
	p := uuid.New()
	s, _, err := a.Create(ctx, by, owner, "https://vigil.example/fhir/R4", []byte(sub(subscription.TopicAlarmFlag.URL, "patient="+p.String(),
		`{"type":"rest-hook","endpoint":"https://ehr.example/hook","extension":[{"url":"`+subscription.ExtHeartbeatPeriod+`","valueUnsignedInt":10}]}`)))
	if err != nil {
		t.Fatal(err)
	}
	// kinds returns the notifications enqueued so far: type and events since start.
	kinds := func() []string {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT payload FROM core_webhook_deliveries WHERE event_type = $1 ORDER BY created_at, id`, subscription.EventType(s.ID))
		if err != nil {
			t.Fatal(err)
		}
		bodies, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, body := range bodies {
			var bundle struct {
				Entry []struct {
					Resource struct {
						Parameter []struct {
							Name        string `json:"name"`
							ValueCode   string `json:"valueCode"`
							ValueString string `json:"valueString"`
						} `json:"parameter"`
					} `json:"resource"`
				} `json:"entry"`
			}
			if err := json.Unmarshal(body, &bundle); err != nil || len(bundle.Entry) == 0 {
				t.Fatalf("notification %s: %v", body, err)
			}
			typ, events := "", ""
			for _, prm := range bundle.Entry[0].Resource.Parameter {
				switch prm.Name {
				case "type":
					typ = prm.ValueCode
				case "events-since-subscription-start":
					events = prm.ValueString
				}
			}
			out = append(out, typ+":"+events)
		}
		return out
	}
	beat := func(want int) {
		t.Helper()
		na, errA := a.Heartbeats(ctx)
		nb, errB := b.Heartbeats(ctx)
		if errA != nil || errB != nil || na+nb != want {
			t.Errorf("at %s: heartbeats enqueued by the two replicas = %d + %d (%v, %v), want %d in all",
				clock.Now().Format(time.TimeOnly), na, nb, errA, errB, want)
		}
	}
	alarm, err := json.Marshal(alarms.Transition{Kind: alarms.Opened, Alarm: alarms.Alarm{ID: uuid.New(), PatientID: p, Severity: alarms.SeverityHigh, PeakSeverity: alarms.SeverityHigh}})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(9 * time.Second)
	beat(0) // 9 s after the handshake
	clock.Advance(time.Second)
	beat(1) // 10 s
	beat(0) // claimed: not again
	clock.Advance(5 * time.Second)
	if n, err := a.Dispatch(ctx, core.Event{Type: "alarm.opened", PatientID: p, Data: alarm}); err != nil || n != 1 {
		t.Fatalf("Dispatch = %d, %v; want 1", n, err)
	}
	clock.Advance(9 * time.Second)
	beat(0) // 9 s after the event notification (19 s after the last heartbeat)
	clock.Advance(time.Second)
	beat(1)
	if got, want := strings.Join(kinds(), " "), "handshake:0 heartbeat:0 event-notification:1 heartbeat:1"; got != want {
		t.Errorf("notifications = %s, want %s", got, want)
	}
	// A deleted Subscription gets no heartbeat.
	if err := a.Delete(ctx, by, s.ID); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	beat(0)
}
