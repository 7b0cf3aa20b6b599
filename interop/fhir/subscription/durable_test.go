package subscription_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/interop/fhir/api"
	"github.com/vigilhealth/vigil/interop/fhir/subscription"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// notified is one event notification as the receiver reads it: its events since start and
// its notification-events (event number, focus reference).
type notified struct {
	total  int64
	events []int64
	focus  []string
}

func notifications(t *testing.T, ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, id uuid.UUID) []notified {
	t.Helper()
	rows, err := q.Query(ctx, `SELECT payload FROM core_webhook_deliveries WHERE event_type = $1`, subscription.EventType(id))
	if err != nil {
		t.Fatal(err)
	}
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	type param struct {
		Name           string `json:"name"`
		ValueCode      string `json:"valueCode"`
		ValueString    string `json:"valueString"`
		ValueReference *struct {
			Reference string `json:"reference"`
		} `json:"valueReference"`
		Part []param `json:"part"`
	}
	var out []notified
	for _, body := range bodies {
		var bundle struct {
			Entry []struct {
				Resource struct {
					Parameter []param `json:"parameter"`
				} `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(body, &bundle); err != nil || len(bundle.Entry) == 0 {
			t.Fatalf("notification %s: %v", body, err)
		}
		var n notified
		typ := ""
		for _, p := range bundle.Entry[0].Resource.Parameter {
			switch p.Name {
			case "type":
				typ = p.ValueCode
			case "events-since-subscription-start":
				n.total, _ = strconv.ParseInt(p.ValueString, 10, 64)
			case "notification-event":
				for _, pp := range p.Part {
					switch {
					case pp.Name == "event-number":
						v, _ := strconv.ParseInt(pp.ValueString, 10, 64)
						n.events = append(n.events, v)
					case pp.Name == "focus" && pp.ValueReference != nil:
						n.focus = append(n.focus, pp.ValueReference.Reference)
					}
				}
			}
		}
		if typ == "event-notification" {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b notified) int { return int(a.total - b.total) })
	return out
}

// The durable dispatcher (RunDurable, as vigil serve runs it): vitals stored and an alarm
// raised while it is stopped are notified when it starts again — with two replicas running
// it on one database — each exactly once, in the order they were stored, the events since
// start counting on without a gap from before the stop; a Subscription created while the
// dispatcher is behind is notified only of what was stored after its creation.
// Verifies: REQ-INT-051, REQ-INT-052
func TestDurableDispatchResumesAfterStop(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	rec := audittest.Recorder(t, pool, nil)
	resources, err := api.New(api.Config{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(t, nil).PHI()})
	if err != nil {
		t.Fatal(err)
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "admin-1", AuthMethod: "test"}}
	site, err := cs.CreateSite(ctx, by, "General")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := cs.CreateWard(ctx, by, site.ID, "ICU")
	if err != nil {
		t.Fatal(err)
	}
	pat, err := cs.CreatePatient(ctx, by, core.PatientPHI{MRN: "SUB-1", FamilyName: "Doe", GivenName: "Pat"}, &ward.ID)
	if err != nil {
		t.Fatal(err)
	}
	p := pat.ID
	newSvc := func() *subscription.Service {
		svc, err := subscription.New(subscription.Config{Pool: pool, Webhooks: cs, Resources: resources, Policy: idOnlyPolicy{t},
			Recorder: rec, Refresh: time.Millisecond, PollInterval: 20 * time.Millisecond, LeaderInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	// run starts n replicas' RunDurable and returns the function that stops them all.
	run := func(n int) func() {
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for range n {
			svc := newSvc()
			wg.Add(1)
			go func() { defer wg.Done(); _ = svc.RunDurable(rctx) }()
		}
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cancel()
				wg.Wait()
			}
		}
		t.Cleanup(stop)
		return stop
	}
	owner := subscription.Owner{Kind: audit.ActorUser, ID: uuid.New(), Subject: "user:x"}
	svc := newSvc()
	vit, _, err := svc.Create(ctx, by, owner, "https://vigil.example/fhir/R4",
		[]byte(sub(subscription.TopicVitalSigns.URL, "patient="+p.String(), `{"type":"rest-hook","endpoint":"https://ehr.example/vitals"}`)))
	if err != nil {
		t.Fatal(err)
	}
	flag, _, err := svc.Create(ctx, by, owner, "https://vigil.example/fhir/R4",
		[]byte(sub(subscription.TopicAlarmFlag.URL, "patient="+p.String(), `{"type":"rest-hook","endpoint":"https://ehr.example/flags"}`)))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	seq := 0
	var want []string // the vitals' focus, in storing order
	upload := func() {
		t.Helper()
		seq++
		at := t0.Add(time.Duration(seq) * time.Second)
		var h [32]byte
		copy(h[:], fmt.Sprintf("durable-upload-%d", seq))
		if _, err := cs.Ingest(ctx, core.Batch{PatientID: p, Provenance: core.Provenance{DeviceID: "dev-1", KeyID: "dev/1", UploadHash: h,
			Sequence: uint64(seq), Transport: "http"}, Samples: []core.Sample{
			{Code: "8867-4", Value: float64(60 + seq), Unit: "/min", Time: at}, {Code: "8480-6", Value: 120, Unit: "mm[Hg]", Time: at}}}); err != nil {
			t.Fatal(err)
		}
		// Each upload's observations by effective time, then code.
		want = append(want, "Observation/"+api.ObservationIDOf(p, "8480-6", at), "Observation/"+api.ObservationIDOf(p, "8867-4", at))
	}
	count := func(id uuid.UUID) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM core_webhook_deliveries WHERE event_type = $1`, subscription.EventType(id)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	wait := func(id uuid.UUID, n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for count(id) < n {
			if time.Now().After(deadline) {
				t.Fatalf("Subscription/%s: fewer than %d deliveries after a minute", id, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	cursor := func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM interop_feed_cursors WHERE name = $1`, subscription.CursorName).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}

	// Running: the first start makes the cursor at the present; an upload is notified.
	stop := run(1)
	for deadline := time.Now().Add(time.Minute); !cursor(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no cursor a minute after the start")
		}
	}
	upload()
	wait(vit.ID, 1+1)
	stop()

	// Stopped: three uploads, an alarm raised, one more upload.
	upload()
	upload()
	upload()
	as, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	var alarmID uuid.UUID
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		trs, err := as.Apply(ctx, tx, alarms.Signal{PatientID: p, RuleID: "hr-high", RuleVersion: 1,
			Raise: true, Severity: alarms.SeverityHigh, Message: "HR high", At: time.Now()})
		if err == nil && len(trs) > 0 {
			alarmID = trs[0].Alarm.ID
		}
		return err
	}); err != nil || alarmID == uuid.Nil {
		t.Fatalf("raise an alarm: %v (id %s)", err, alarmID)
	}
	upload()
	time.Sleep(200 * time.Millisecond)
	if n := count(vit.ID); n != 1+1 {
		t.Fatalf("deliveries while stopped = %d, want 2 (nothing dispatched)", n)
	}

	// Started again, on two replicas: everything stored meanwhile, once.
	stop = run(2)
	wait(vit.ID, 1+5)
	wait(flag.ID, 1+1)
	time.Sleep(300 * time.Millisecond) // a few more passes: nothing more
	stop()
	if n := count(vit.ID); n != 1+5 {
		t.Errorf("vital-signs deliveries = %d, want 6 (handshake and 5 uploads, each once)", n)
	}
	if n := count(flag.ID); n != 1+1 {
		t.Errorf("alarm deliveries = %d, want 2 (handshake and the alarm, once)", n)
	}
	var got []string
	next := int64(1)
	for _, n := range notifications(t, ctx, pool, vit.ID) {
		for _, e := range n.events {
			if e != next {
				t.Errorf("event number %d, want %d (continuous)", e, next)
			}
			next++
		}
		if n.total != next-1 {
			t.Errorf("events since start %d, want %d", n.total, next-1)
		}
		got = append(got, n.focus...)
	}
	if !slices.Equal(got, want) {
		t.Errorf("vital-signs focus, in event-number order =\n%v\nwant (storing order)\n%v", got, want)
	}
	if s, err := svc.Get(ctx, vit.ID); err != nil || s.Events != int64(len(want)) {
		t.Errorf("vital-signs events since start = %d, %v; want %d", s.Events, err, len(want))
	}
	fl := notifications(t, ctx, pool, flag.ID)
	if len(fl) != 1 || !slices.Equal(fl[0].focus, []string{"Flag/" + alarmID.String()}) || !slices.Equal(fl[0].events, []int64{1}) {
		t.Errorf("alarm notifications = %+v, want one: event 1, Flag/%s", fl, alarmID)
	}

	// A Subscription created while the dispatcher is behind (stopped here) gets only what is
	// stored after its creation, not the rows stored before that the dispatcher reads later.
	upload()
	upload()
	late, _, err := svc.Create(ctx, by, owner, "https://vigil.example/fhir/R4",
		[]byte(sub(subscription.TopicVitalSigns.URL, "patient="+p.String(), `{"type":"rest-hook","endpoint":"https://ehr.example/late"}`)))
	if err != nil {
		t.Fatal(err)
	}
	upload()
	stop = run(1)
	wait(vit.ID, 1+8)
	wait(late.ID, 1+1)
	time.Sleep(300 * time.Millisecond) // a few more passes: nothing more
	stop()
	ln := notifications(t, ctx, pool, late.ID)
	if len(ln) != 1 || !slices.Equal(ln[0].focus, want[len(want)-2:]) || !slices.Equal(ln[0].events, []int64{1, 2}) {
		t.Errorf("notifications of the Subscription created after two uploads = %+v, want one: events 1 and 2, %v (the upload after it)", ln, want[len(want)-2:])
	}
}
