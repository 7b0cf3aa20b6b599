package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// newCoreTestSealer is the real PHI helper of a local key ring in a temporary directory.
func newCoreTestSealer(t testing.TB) *keys.PHI {
	t.Helper()
	return keystest.LocalRing(t, nil).PHI()
}

type sseEvent struct {
	id, typ, data string
}

// readSSE parses events from an SSE body onto a channel until the body ends.
func readSSE(body *bufio.Reader, out chan<- sseEvent) {
	defer close(out)
	var ev sseEvent
	for {
		line, err := body.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev.typ != "" || ev.data != "" {
				out <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
}

// The patient and observation endpoints and the SSE stream, over a real HTTP server: a
// published alarm event reaches a filtered stream, and a reconnect with Last-Event-ID resumes
// without a gap.
// Verifies: REQ-CORE-012, REQ-CORE-010, REQ-CORE-001
func TestCoreAPIAndStream(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	now := time.Now().UTC()
	rec := audittest.Recorder(t, pool, nil)
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: newCoreTestSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl := SignedIn(t, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Core: svc, Auth: authSvc})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	call := jsonCaller(t, cl, ts.URL)
	st, body := call("POST", "/api/v1/patients", map[string]any{"mrn": "A-1", "given_name": "Ada", "family_name": "King"})
	if st != http.StatusCreated {
		t.Fatalf("POST /patients = %d %v, want 201", st, body)
	}
	pid := body["id"].(string)
	if st, body := call("POST", "/api/v1/patients", map[string]any{"mrn": "a1"}); st != http.StatusConflict || body["error"].(map[string]any)["code"] != "conflict" {
		t.Errorf("POST /patients (same MRN) = %d %v, want 409 conflict", st, body)
	}
	if st, body := call("GET", "/api/v1/patients?mrn=A1", nil); st != 200 || len(body["patients"].([]any)) != 1 {
		t.Errorf("GET /patients?mrn = %d %v, want the patient", st, body)
	}
	if st, _ := call("GET", "/api/v1/patients/"+uuid.NewString(), nil); st != http.StatusNotFound {
		t.Errorf("GET /patients/unknown = %d, want 404", st)
	}

	// Observations through core, read back raw and downsampled.
	p := uuid.MustParse(pid)
	var h [32]byte
	_, _ = rand.Read(h[:])
	b := core.Batch{PatientID: p, Provenance: core.Provenance{DeviceID: "d", KeyID: "d/1", UploadHash: h, Transport: "http"}}
	base := now.Truncate(time.Hour).Add(-time.Hour)
	for i := 0; i < 60; i++ {
		b.Samples = append(b.Samples, core.Sample{Code: core.LOINCHeartRate, Value: float64(60 + i%10), Unit: "/min", Time: base.Add(time.Duration(i) * time.Minute)})
	}
	if _, err := svc.Ingest(ctx, b); err != nil {
		t.Fatal(err)
	}
	q := "/api/v1/patients/" + pid + "/observations?code=8867-4&from=" + base.Format(time.RFC3339) + "&to=" + base.Add(time.Hour).Format(time.RFC3339)
	if st, body := call("GET", q, nil); st != 200 || len(body["observations"].([]any)) != 60 {
		t.Errorf("GET observations = %d, %d rows; want 200, 60", st, len(body["observations"].([]any)))
	}
	st, body = call("GET", q+"&bucket=10m", nil)
	if st != 200 || len(body["buckets"].([]any)) != 6 {
		t.Fatalf("GET observations bucket=10m = %d %v, want 6 buckets", st, body)
	}
	b0 := body["buckets"].([]any)[0].(map[string]any)
	if b0["min"].(float64) != 60 || b0["max"].(float64) != 69 || b0["mean"].(float64) != 64.5 || b0["count"].(float64) != 10 {
		t.Errorf("first bucket = %v, want min 60 max 69 mean 64.5 count 10", b0)
	}
	if st, body := call("GET", "/api/v1/patients/"+pid+"/latest", nil); st != 200 || len(body["observations"].([]any)) != 1 ||
		body["observations"].([]any)[0].(map[string]any)["value"].(float64) != 69 {
		t.Errorf("GET latest = %d %v, want the last heart rate (69)", st, body)
	}
	if st, body := call("GET", q+"&bucket=1ms", nil); st != 400 || body["error"].(map[string]any)["code"] != "invalid_request" {
		t.Errorf("GET observations bucket=1ms = %d %v, want 400 invalid_request", st, body)
	}

	// SSE: a stream filtered to this patient gets its alarm event and not another patient's.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	open := func(lastID string) (<-chan sseEvent, func()) {
		req, _ := http.NewRequestWithContext(sctx, "GET", ts.URL+"/api/v1/stream?patient_id="+pid, nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("GET /stream = %d %s, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		ch := make(chan sseEvent, 16)
		go readSSE(bufio.NewReader(resp.Body), ch)
		return ch, func() { resp.Body.Close() }
	}
	events, closeStream := open("")
	waitSubs := func(n int) {
		for i := 0; svc.Hub().Subscribers() < n; i++ {
			if i > 500 {
				t.Fatalf("stream did not subscribe")
			}
			time.Sleep(10 * time.Millisecond) // waiting for the server goroutine, not for logic
		}
	}
	waitSubs(1)
	svc.Hub().Publish(core.Event{Type: "alarm.opened", PatientID: uuid.New(), Data: json.RawMessage(`{}`)})
	id1 := svc.Hub().Publish(core.Event{Type: "alarm.opened", PatientID: p, Data: json.RawMessage(`{"n":1}`)})
	next := func(ch <-chan sseEvent) sseEvent {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("stream ended")
			}
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no event on the stream")
		}
		return sseEvent{}
	}
	ev := next(events)
	var got core.Event
	if err := json.Unmarshal([]byte(ev.data), &got); err != nil || ev.typ != "alarm.opened" || got.PatientID != p || ev.id != jsonNum(id1) {
		t.Fatalf("stream event = %+v (%v), want alarm.opened of the patient with id %d", ev, err, id1)
	}
	closeStream()
	// Missed while disconnected, then resumed from Last-Event-ID.
	id2 := svc.Hub().Publish(core.Event{Type: "alarm.acknowledged", PatientID: p, Data: json.RawMessage(`{"n":2}`)})
	events, closeStream = open(ev.id)
	defer closeStream()
	if ev := next(events); ev.typ != "alarm.acknowledged" || ev.id != jsonNum(id2) {
		t.Errorf("resumed stream first event = %+v, want alarm.acknowledged id %d", ev, id2)
	}
	// A Last-Event-ID the hub cannot resume from gets a reset.
	resetCh, closeReset := open("1")
	defer closeReset()
	if ev := next(resetCh); ev.typ != "reset" {
		t.Errorf("stream with an unknown Last-Event-ID first event = %+v, want reset", ev)
	}
}

func jsonNum(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
