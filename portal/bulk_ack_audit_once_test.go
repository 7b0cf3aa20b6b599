package portal_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/alarms"
)

// A bulk acknowledge that acknowledges nothing leaves exactly one audit event with its
// request id, whose outcome matches the answer: with no active alarm of the patient it is a
// no-op, answered 303 and recorded once as http.request.completed (success); with no patient
// (an empty selection) or a patient that does not exist it is refused, recorded once; and when
// every active alarm was acknowledged by someone else between the page's read and the
// acknowledge (the lifecycle refuses it as stale and records its alarm.acknowledged rejection),
// it is answered 409 nothing_to_acknowledge — not a success redirect — and that rejection is
// the request's one record, never followed by the server's http.request.completed.
// Verifies: REQ-POR-091
func TestBulkAcknowledgeOfNothingAuditedOnce(t *testing.T) {
	s := newStack(t)
	nEmail, nSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nEmail, nSecret)
	post := func(form url.Values) *http.Response {
		return s.postFormAs(t, nurse, "/alarms/acknowledge-patient", form, true)
	}
	const ok, rejected = "success", "rejected"
	s.auditedOnce(t, "bulk acknowledge of a patient without active alarms", post(url.Values{"patient_id": {s.patients[2].ID.String()}}),
		303, "http.request.completed", ok)
	s.auditedOnce(t, "bulk acknowledge of no patient", post(url.Values{}), 400, "http.request.rejected", rejected)
	s.auditedOnce(t, "bulk acknowledge of an unknown patient", post(url.Values{"patient_id": {uuid.NewString()}}), 404, "", rejected)

	// The race: the page saw the alarm active; another clinician acknowledges it first.
	alarm := s.raiseAlarm(t, s.patients[1].ID)
	tx, err := s.Pool.Begin(s.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(s.Ctx, `SELECT 1 FROM alarms WHERE id = $1 FOR UPDATE`, alarm); err != nil {
		t.Fatal(err)
	}
	waiting := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			var w int
			if err := s.Pool.QueryRow(s.Ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
				AND wait_event_type = 'Lock' AND query LIKE '%FROM alarms WHERE id=$1 FOR UPDATE%'`).Scan(&w); err != nil {
				t.Fatal(err)
			}
			if w >= n {
				return
			}
		}
		t.Fatalf("fewer than %d acknowledges waiting for the alarm's lock", n)
	}
	first := make(chan error, 1)
	go func() {
		_, err := s.alarms.Acknowledge(s.Ctx, alarm, admin, "at the bedside")
		first <- err
	}()
	waiting(1)
	bulk := make(chan *http.Response, 1)
	go func() { bulk <- post(url.Values{"patient_id": {s.patients[1].ID.String()}}) }()
	waiting(2)
	if err := tx.Commit(s.Ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("the other clinician's acknowledge: %v", err)
	}
	res := <-bulk
	page := s.auditedOnce(t, "bulk acknowledge of alarms acknowledged meanwhile", res, http.StatusConflict, "alarm.acknowledged", rejected)
	if !strings.Contains(page, "nothing_to_acknowledge") {
		t.Errorf("bulk acknowledge of alarms acknowledged meanwhile: no nothing_to_acknowledge code in the page:\n%.600s", page)
	}
	if a, err := s.alarms.Get(s.Ctx, alarm); err != nil || a.State != alarms.StateAcknowledged || a.AckedBy != admin.Actor.ID {
		t.Errorf("alarm after the race = %+v, %v; want acknowledged by the first clinician", a, err)
	}
	s.stillOnce(t)
}
