package portal_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// wardStreamQuery is the query of the stream the ward overview opens for patients
// (portal/web/static/ward.js): the patients on the page and the event types a tile shows.
func wardStreamQuery(patients []uuid.UUID) string {
	q := url.Values{}
	for _, p := range patients {
		q.Add("patient_id", p.String())
	}
	q.Add("type", core.TypeObservations)
	for _, k := range []string{"opened", "retriggered", "severity_escalated", "severity_deescalated", "acknowledged",
		"silenced", "silence_expired", "escalated", "reminder", "resolved"} {
		q.Add("type", "alarm."+k)
	}
	return q.Encode()
}

// streamEvent is what a stream reader keeps of one event.
type streamEvent struct {
	id      uint64
	typ     string
	patient uuid.UUID
	upload  uuid.UUID
}

// Many ward overviews open at once (500; 40 with -short), each the stream of a clinician of
// one of two wards signed in with their own session, all receive every observations event of
// their ward's patients — none lost, none of the other ward's, in the order the uploads were
// accepted, with increasing event ids — while the two wards' devices upload in turn.
// Verifies: REQ-POR-051
func TestManyWardStreamsReceiveEveryEventInOrder(t *testing.T) {
	t.Parallel()
	sessions, uploads := 500, 15
	if testing.Short() {
		sessions, uploads = 40, 8
	}
	s := newStack(t)
	ctx, cancel := context.WithTimeout(s.Ctx, 10*time.Minute) // a safety net, not a timed assertion
	defer cancel()

	// The other ward's patient gets a device of its own.
	other := s.RegisterDevice(t)
	s.Enroll(t, other)
	if _, err := s.Devices.AssignPatient(ctx, devicestest.Admin, other.ID, &s.other.ID); err != nil {
		t.Fatal(err)
	}
	wardPatients := [2][]uuid.UUID{{}, {s.other.ID}}
	for _, p := range s.patients {
		wardPatients[0] = append(wardPatients[0], p.ID)
	}
	wards := [2]uuid.UUID{s.ward.ID, s.otherW.ID}
	devicePatient := [2]uuid.UUID{s.patients[0].ID, s.other.ID} // the patients with a device

	// The clinicians, signed in (one session each), half in each ward.
	type reader struct {
		ward   int
		client *http.Client
		mu     sync.Mutex
		got    []streamEvent
		err    error
	}
	readers := make([]*reader, sessions)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range readers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			w := i % 2
			u := authtest.Enroll(t, s.auth, fmt.Sprintf("stream-%d-%s@example.org", i, uuid.NewString()[:6]),
				authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(wards[w])})
			readers[i] = &reader{ward: w, client: authtest.Client(s.auth, authtest.SignIn(t, s.auth, u))}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Every stream open before the first upload: the answer's header comes once the stream
	// is subscribed.
	var readersDone sync.WaitGroup
	for i, r := range readers {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.ts.URL+"/api/v1/stream?"+wardStreamQuery(wardPatients[r.ward]), nil)
		res, err := r.client.Do(req)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if res.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			t.Fatalf("GET /api/v1/stream (session %d) = %d: %s", i, res.StatusCode, b)
		}
		readersDone.Add(1)
		go func() {
			defer readersDone.Done()
			defer res.Body.Close()
			err := readStream(res.Body, func(ev streamEvent) bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				r.got = append(r.got, ev)
				return len(r.got) < uploads // stop once complete
			})
			r.mu.Lock()
			r.err = err
			r.mu.Unlock()
		}()
	}
	if n := s.Core.Hub().Subscribers(); n < sessions {
		t.Fatalf("hub subscribers = %d, want at least %d", n, sessions)
	}

	// The devices upload in turn: ward A's, then ward B's, uploads times.
	var want [2][]uuid.UUID // each ward's uploads (their audit events), in order of acceptance
	devs := []struct {
		d    *devicestest.Device
		ward int
	}{{s.device, 0}, {other, 1}}
	for range uploads {
		s.Clock.Add(5 * time.Second) // new samples each time (the same ones would be duplicates)
		for _, d := range devs {
			want[d.ward] = append(want[d.ward], s.acceptedUpload(t, d.d.Upload(t, s.Clock.Now(), 5)))
		}
	}
	// Every stream has its events by now or soon; one still short after two minutes has lost
	// some (a safety net against hanging, not a timed assertion).
	done := make(chan struct{})
	go func() { readersDone.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cancel()
		<-done
	}

	for i, r := range readers {
		if r.err != nil && r.err != errStreamComplete {
			t.Errorf("session %d (ward %d): stream ended: %v after %d events", i, r.ward, r.err, len(r.got))
			continue
		}
		var ups []uuid.UUID
		var last uint64
		for j, ev := range r.got {
			if ev.typ != core.TypeObservations || ev.patient != devicePatient[r.ward] {
				t.Errorf("session %d (ward %d): event %d = %s for patient %s, not one of its ward's observations", i, r.ward, j, ev.typ, ev.patient)
			}
			if ev.id <= last {
				t.Errorf("session %d: event %d has id %d after %d", i, j, ev.id, last)
			}
			last = ev.id
			ups = append(ups, ev.upload)
		}
		if fmt.Sprint(ups) != fmt.Sprint(want[r.ward]) {
			t.Errorf("session %d (ward %d) received uploads %v, want %v (all of its ward's, in order)", i, r.ward, ups, want[r.ward])
		}
	}
}

// acceptedUpload posts a signed envelope to the upload endpoint (as a device: CBOR receipt);
// it must be accepted. It returns the upload's audit event (the upload_id of its
// observations event).
func (s *stack) acceptedUpload(t testing.TB, raw []byte) uuid.UUID {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.ts.URL+"/api/v1/uploads", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/cbor")
	req.Header.Set("Accept", "application/cbor")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/v1/uploads = %d: %s", res.StatusCode, body)
	}
	_, rc, err := envelope.ParseSignedReceipt(body)
	if err != nil {
		t.Fatal(err)
	}
	return uuid.MustParse(rc.AuditEvent)
}

var errStreamComplete = fmt.Errorf("complete")

// readStream reads server-sent events from r and hands each to got until got returns false
// (errStreamComplete) or r ends.
func readStream(r io.Reader, got func(streamEvent) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var ev streamEvent
	var data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.typ != "" && data != "" {
				var body struct {
					PatientID uuid.UUID `json:"patient_id"`
					Data      struct {
						UploadID uuid.UUID `json:"upload_id"`
					} `json:"data"`
				}
				if err := json.Unmarshal([]byte(data), &body); err != nil {
					return fmt.Errorf("event %d: %w", ev.id, err)
				}
				ev.patient, ev.upload = body.PatientID, body.Data.UploadID
				if !got(ev) {
					return errStreamComplete
				}
			}
			ev, data = streamEvent{}, ""
		case strings.HasPrefix(line, "id: "):
			ev.id, _ = strconv.ParseUint(line[4:], 10, 64)
		case strings.HasPrefix(line, "event: "):
			ev.typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF
}
