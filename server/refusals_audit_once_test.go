package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pquerna/otp/totp"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// The API's refusals whose domain records its own event — a request without its CSRF token
// (auth.csrf.rejected), an alarm action the lifecycle refuses (alarm.acknowledged, …
// rejected), a refused enrollment (auth.enrollment.failed) — leave exactly that one event
// with the request's id, never also the error handler's http.request.rejected; a refusal no
// domain records (a password the policy refuses) leaves the server's one event.
// Verifies: REQ-POR-084, REQ-POR-085, REQ-POR-086
func TestCSRFAndDomainRefusalsAuditedOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	now := time.Now().UTC()
	clk := func() time.Time { return now }
	rec := audittest.Recorder(t, pool, nil)
	alarmSvc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Now: clk, MaxSilence: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: alarmSvc, Now: clk})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl, _ := SignedInUserOn(t, pool, rec)
	auditSvc := chaintest.Start(t, pool, url, rec) // the state-change audit middleware is mounted with it
	s, err := New(Config{Pool: pool, Recorder: rec, Alarms: alarmSvc, Rules: eng, Now: clk, Auth: authSvc, Audit: auditSvc,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)

	p := uuid.New()
	res, err := eng.Evaluate(ctx, p, []rules.Observation{{PatientID: p, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: p, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now}})
	if err != nil || len(res.Transitions) == 0 {
		t.Fatalf("Evaluate() = %v, %v; want an alarm", res.Transitions, err)
	}
	alarm := "/api/v1/alarms/" + res.Transitions[0].Alarm.ID.String()
	noCSRF := &http.Client{Transport: &authtest.Transport{CookieName: authSvc.Config().Session.CookieName,
		Session: cl.Transport.(*authtest.Transport).Session, NoCSRF: true}}

	newcomer, err := authSvc.CreateUser(ctx, authtest.Admin, auth.Profile{Email: "refused-newcomer@test.example"})
	if err != nil {
		t.Fatal(err)
	}
	en, err := authSvc.IssueEnrollment(ctx, authtest.Admin, newcomer.ID)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := authSvc.StartEnrollment(ctx, authtest.Admin, en.Token)
	if err != nil {
		t.Fatal(err)
	}
	code, err := totp.GenerateCode(offer.Secret, now)
	if err != nil {
		t.Fatal(err)
	}
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	complete := func(password, code string) string {
		return `{"token":"` + en.Token + `","password":"` + password + `","totp_code":"` + code + `"}`
	}

	if _, err := alarmSvc.Acknowledge(ctx, res.Transitions[0].Alarm.ID, audit.Event{Actor: authtest.Admin.Actor}, ""); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		what   string
		cl     *http.Client
		path   string
		body   string
		status int
		action string
	}{
		{"acknowledge without the CSRF token", noCSRF, alarm + "/acknowledge", `{}`, 403, "auth.csrf.rejected"},
		{"acknowledge again", cl, alarm + "/acknowledge", `{}`, 409, "alarm.acknowledged"},
		{"silence for longer than allowed", cl, alarm + "/silence", `{"reason":"turning","duration":"5h"}`, 400, "alarm.silenced"},
		// Refused by the access layer before the lifecycle (no alarm to authorize on): the server's record.
		{"resolve an unknown alarm", cl, "/api/v1/alarms/" + uuid.NewString() + "/resolve", `{"reason":"gone"}`, 404, "http.request.rejected"},
		{"start an unknown enrollment", http.DefaultClient, "/api/v1/auth/enrollment", `{"token":"vge_nope"}`, 401, "auth.enrollment.failed"},
		{"complete with a wrong code", http.DefaultClient, "/api/v1/auth/enrollment/complete", complete("correct horse battery staple", wrong), 401, "auth.enrollment.failed"},
		{"complete with a short password", http.DefaultClient, "/api/v1/auth/enrollment/complete", complete("short", code), 400, "http.request.rejected"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Content-Type", "application/json")
		res, err := c.cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rid := res.Header.Get("X-Request-Id")
		var got []string
		rows, err := pool.Query(ctx, `SELECT action || ' ' || outcome FROM audit_events WHERE request_id = $1 ORDER BY seq`, rid)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var a string
			if err := rows.Scan(&a); err != nil {
				t.Fatal(err)
			}
			got = append(got, a)
		}
		rows.Close()
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.status {
			t.Errorf("%s = %d, want %d: %s", c.what, res.StatusCode, c.status, b)
		}
		if rid == "" || len(got) != 1 || got[0] != c.action+" rejected" {
			t.Errorf("%s: audit events of request %q = %q, want exactly one %s (rejected)", c.what, rid, got, c.action)
		}
	}
}
