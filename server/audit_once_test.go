package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// auditedRoute is one state-changing route and one successful request to it.
type auditedRoute struct {
	route  string // "METHOD /path" as mounted (echo's Routes())
	status int    // the success status
	action string // the one audit event the request must leave
	// req builds the request (path and body) from what earlier rows left in st.
	req func(t *testing.T) (path, ctype string, body []byte)
	// then reads what later rows need from the answer.
	then func(t *testing.T, body []byte)
}

// testSession is a signed-in client and its user.
type testSession struct {
	cl   *http.Client
	user *authtest.User
}

// Every successful state-changing request leaves exactly one audit event with its request id:
// the domain's own event where the domain records one, http.request.completed otherwise. The
// table must name every state-changing route the server mounts, so a new route without a row
// fails here until someone decides how it is audited.
// Verifies: REQ-FND-010, REQ-ACC-031
func TestEveryStateChangeAuditedOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	clk := devicestest.NewClock(time.Now().UTC())
	env := devicestest.NewOn(t, pool, url, clk, nil)
	auditSvc := chaintest.Start(t, pool, url, env.Rec)
	alarmSvc, err := alarms.New(alarms.Config{Pool: pool, Recorder: env.Rec, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: env.Rec, Alarms: alarmSvc, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	authSvc, cl, user := SignedInUserOn(t, pool, env.Rec)
	// Other sessions (their rows end them) and what the auth rows need: a user to enroll, a
	// user to sign in, a service account holding a role.
	outCl, outUser := SignedInUser(t, authSvc, authtest.Grant{Role: auth.RoleQuality, Domain: auth.AllDomains})
	everyCl, everyUser := SignedInUser(t, authSvc, authtest.Grant{Role: auth.RoleQuality, Domain: auth.AllDomains})
	signer := authtest.Enroll(t, authSvc, "signer@test.example")
	newcomer, err := authSvc.CreateUser(ctx, authtest.Admin, auth.Profile{Email: "newcomer@test.example"})
	if err != nil {
		t.Fatal(err)
	}
	enrollment, err := authSvc.IssueEnrollment(ctx, authtest.Admin, newcomer.ID)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := authSvc.CreateServiceAccount(ctx, authtest.Admin, "ci")
	if err != nil {
		t.Fatal(err)
	}
	if err := authSvc.GrantRole(ctx, authtest.Admin, auth.ServiceSubject(ci.ID), auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	var totpSecret, grantID, apiTokenID string
	// The rows that end their session send it from another user's (default: the test's user).
	sessions := map[string]*testSession{
		"POST /api/v1/auth/sign-out":            {outCl, outUser},
		"POST /api/v1/auth/sign-out-everywhere": {everyCl, everyUser},
	}
	s, err := New(Config{Pool: pool, Recorder: env.Rec, Core: env.Core, Devices: env.Devices, Alarms: alarmSvc, Rules: eng, Audit: auditSvc,
		Auth: authSvc, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)

	// An open alarm for the alarm actions (silence, acknowledge, resolve in that order).
	alarmPatient := uuid.New()
	now := clk.Now()
	res, err := eng.Evaluate(ctx, alarmPatient, []rules.Observation{
		{PatientID: alarmPatient, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: alarmPatient, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now}})
	var alarmID string
	for _, tr := range res.Transitions { // and a partial NEWS2 (SpO2 84 alone scores 3)
		if tr.Alarm.RuleID == "spo2-low" {
			alarmID = tr.Alarm.ID.String()
		}
	}
	if err != nil || alarmID == "" {
		t.Fatalf("Evaluate() = %v, %v; want a spo2-low alarm", res.Transitions, err)
	}

	// State the rows hand on to each other.
	var siteID, wardID, patientID, webhookID, deliveryID, deviceID, token, subscriptionID string
	var key, key2 ed25519.PrivateKey
	var dev *devicestest.Device
	jsonReq := func(path string, v any) func(*testing.T) (string, string, []byte) {
		return func(*testing.T) (string, string, []byte) {
			b, _ := json.Marshal(v)
			return path, echo.MIMEApplicationJSON, b
		}
	}
	field := func(dst *string, name string) func(*testing.T, []byte) {
		return func(t *testing.T, body []byte) {
			t.Helper()
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatalf("decode answer: %v (%s)", err, body)
			}
			for _, part := range strings.Split(name, ".") {
				switch v := m[part].(type) {
				case map[string]any:
					m = v
				case string:
					*dst = v
					return
				}
			}
			t.Fatalf("answer %s has no string %s", body, name)
		}
	}
	lazy := func(f func() (string, any)) func(*testing.T) (string, string, []byte) {
		return func(t *testing.T) (string, string, []byte) {
			path, v := f()
			return jsonReq(path, v)(t)
		}
	}
	cbor := func(f func(t *testing.T) (string, []byte)) func(*testing.T) (string, string, []byte) {
		return func(t *testing.T) (string, string, []byte) {
			path, b := f(t)
			return path, "application/cbor", b
		}
	}
	const v1 = "/api/v1"
	rows := []auditedRoute{
		// Core: sites, wards, patients, care teams.
		{"POST /api/v1/sites", 201, "site.created", jsonReq(v1+"/sites", map[string]any{"name": "North"}), field(&siteID, "id")},
		{"POST /api/v1/sites/:id/wards", 201, "ward.created",
			lazy(func() (string, any) { return v1 + "/sites/" + siteID + "/wards", map[string]any{"name": "ICU"} }), field(&wardID, "id")},
		{"POST /api/v1/patients", 201, "patient.created",
			lazy(func() (string, any) {
				return v1 + "/patients", map[string]any{"mrn": "AO-1", "given_name": "Ada", "family_name": "King", "ward_id": wardID}
			}), field(&patientID, "id")},
		{"POST /api/v1/patients/:id/move", 204, "patient.moved",
			lazy(func() (string, any) {
				return v1 + "/patients/" + patientID + "/move", map[string]any{"ward_id": wardID}
			}), nil},
		{"POST /api/v1/patients/:id/chart", 201, "upload.accepted",
			lazy(func() (string, any) {
				return v1 + "/patients/" + patientID + "/chart", map[string]any{"samples": []map[string]any{
					{"code": "80288-4", "value": 0, "unit": "{score}", "time": clk.Now().Add(-time.Minute)}}}
			}), nil},
		{"PUT /api/v1/wards/:id/news2", 200, "rules.ward_news2_set",
			lazy(func() (string, any) {
				return v1 + "/wards/" + wardID + "/news2", map[string]any{"charted": []string{"acvpu"}, "charted_max_age": "4h", "reason": "ACVPU charted by nurses"}
			}), nil},
		{"POST /api/v1/patients/:id/care-team", 200, "care_team.member_added",
			lazy(func() (string, any) {
				return v1 + "/patients/" + patientID + "/care-team", map[string]any{"clinician_id": "dr-who", "role": "physician"}
			}), nil},
		{"DELETE /api/v1/patients/:id/care-team/:clinician", 204, "care_team.member_removed",
			lazy(func() (string, any) { return v1 + "/patients/" + patientID + "/care-team/dr-who", nil }), nil},
		{"POST /api/v1/patients/:id/discharge", 204, "patient.discharged",
			lazy(func() (string, any) { return v1 + "/patients/" + patientID + "/discharge", nil }), nil},
		// Core: webhooks. No delivery is attempted here.
		{"POST /api/v1/webhooks", 201, "webhook.created",
			jsonReq(v1+"/webhooks", map[string]any{"url": "https://hooks.example.org/vigil", "event_types": []string{"*"}}),
			func(t *testing.T, body []byte) {
				field(&webhookID, "webhook.id")(t, body)
				// A dead-lettered delivery for the redelivery request (dead-lettering itself is
				// core's business, tested there).
				deliveryID = uuid.NewString()
				if _, err := pool.Exec(ctx, `INSERT INTO core_webhook_deliveries (id, webhook_id, event_type, payload, status, attempts, next_attempt_at, created_at, finished_at)
					VALUES ($1, $2, 'alarm.opened', '{}', 'dead', 8, $3, $3, $3)`, deliveryID, webhookID, clk.Now()); err != nil {
					t.Fatal(err)
				}
			}},
		{"POST /api/v1/webhook-deliveries/:id/redeliver", 202, "webhook.redelivery_requested",
			lazy(func() (string, any) { return v1 + "/webhook-deliveries/" + deliveryID + "/redeliver", nil }), nil},
		{"DELETE /api/v1/webhooks/:id", 204, "webhook.deleted",
			lazy(func() (string, any) { return v1 + "/webhooks/" + webhookID, nil }), nil},
		// FHIR Subscriptions (fhir_subscriptions.go): core records the webhook, the API the
		// Subscription.
		{"POST /fhir/R4/Subscription", 201, "webhook.created,fhir.subscription.created",
			jsonReq("/fhir/R4/Subscription", map[string]any{"resourceType": "Subscription", "status": "requested", "reason": "EHR feed",
				"criteria": "https://vigil.health/fhir/SubscriptionTopic/alarm-flag",
				"channel":  map[string]any{"type": "rest-hook", "endpoint": "https://hooks.example.org/fhir", "payload": "application/fhir+json"}}),
			field(&subscriptionID, "id")},
		{"DELETE /fhir/R4/Subscription/:id", 204, "fhir.subscription.deleted,webhook.deleted",
			lazy(func() (string, any) { return "/fhir/R4/Subscription/" + subscriptionID, nil }), nil},
		// Alarms and rules.
		{"POST /api/v1/alarms/:id/silence", 200, "alarm.silenced",
			jsonReq(v1+"/alarms/"+alarmID+"/silence", map[string]any{"reason": "suctioning", "duration": "5m"}), nil},
		{"POST /api/v1/alarms/:id/acknowledge", 200, "alarm.acknowledged",
			jsonReq(v1+"/alarms/"+alarmID+"/acknowledge", map[string]any{"note": "on it"}), nil},
		{"POST /api/v1/alarms/:id/resolve", 200, "alarm.resolved",
			jsonReq(v1+"/alarms/"+alarmID+"/resolve", map[string]any{"reason": "probe repositioned"}), nil},
		{"POST /api/v1/rules/:id/versions", 201, "rule.version_created",
			jsonReq(v1+"/rules/nodata/versions", map[string]any{"version": 1, "name": "No data", "kind": "nodata", "enabled": true,
				"reason": "ICU: 5 minutes", "nodata": map[string]any{"silence": "5m", "severity": "high"}}), nil},
		{"PUT /api/v1/patients/:id/spo2-scale", 200, "rules.spo2_scale_set",
			jsonReq(v1+"/patients/"+alarmPatient.String()+"/spo2-scale", map[string]any{"scale": 2, "reason": "COPD, target 88-92"}), nil},
		{"PUT /api/v1/patients/:id/oxygen", 200, "rules.oxygen_set",
			jsonReq(v1+"/patients/"+alarmPatient.String()+"/oxygen", map[string]any{"on_oxygen": true, "reason": "2 L/min nasal cannula"}), nil},
		// Devices: registry, enrollment, uploads, rotation, status.
		{"POST /api/v1/devices", 201, "device.registered",
			jsonReq(v1+"/devices", map[string]any{"serial": "AO-SN-1", "model": "VM-100", "firmware": "2.0"}), field(&deviceID, "id")},
		{"POST /api/v1/devices/:id/enrollment-tokens", 201, "device.enrollment_token.issued",
			lazy(func() (string, any) { return v1 + "/devices/" + deviceID + "/enrollment-tokens", nil }), field(&token, "token")},
		{"POST /api/v1/devices/enroll", 201, "device.enrolled",
			cbor(func(t *testing.T) (string, []byte) {
				_, key, _ = ed25519.GenerateKey(rand.Reader)
				b, err := envelope.SignEnroll(token, key, clk.Now())
				if err != nil {
					t.Fatal(err)
				}
				return v1 + "/devices/enroll", b
			}), nil},
		{"PUT /api/v1/devices/:id/patient", 200, "device.patient.assigned",
			lazy(func() (string, any) {
				return v1 + "/devices/" + deviceID + "/patient", map[string]any{"patient_id": env.Patient}
			}), nil},
		{"POST /api/v1/uploads", 201, "upload.accepted",
			cbor(func(t *testing.T) (string, []byte) {
				dev = &devicestest.Device{ID: uuid.MustParse(deviceID), Key: key, KV: 1}
				return v1 + "/uploads", dev.Upload(t, clk.Now(), 3)
			}), nil},
		{"POST /api/v1/devices/rotate", 201, "device.key.rotated",
			cbor(func(t *testing.T) (string, []byte) {
				_, key2, _ = ed25519.GenerateKey(rand.Reader)
				b, err := envelope.SignRotate(deviceID, 1, key, key2, clk.Now())
				if err != nil {
					t.Fatal(err)
				}
				return v1 + "/devices/rotate", b
			}), nil},
		{"POST /api/v1/devices/:id/suspend", 200, "device.suspended",
			lazy(func() (string, any) {
				return v1 + "/devices/" + deviceID + "/suspend", map[string]any{"reason": "lost"}
			}), nil},
		{"POST /api/v1/devices/:id/reactivate", 200, "device.reactivated",
			lazy(func() (string, any) { return v1 + "/devices/" + deviceID + "/reactivate", nil }), nil},
		{"POST /api/v1/devices/:id/decommission", 200, "device.decommissioned",
			lazy(func() (string, any) { return v1 + "/devices/" + deviceID + "/decommission", nil }), nil},
		// Access: sign-in, enrollment, sign-out, break-glass, API tokens. The policy changes
		// (break-glass, tokens) record their policy.* event beside the access event, after the
		// change (it carries the digests of the policy lines the change wrote: audit/rowdigest).
		{route: "POST /api/v1/auth/sign-in", status: 200, action: "auth.login.succeeded",
			req: jsonReq(v1+"/auth/sign-in", map[string]any{"email": signer.Email, "password": authtest.Password,
				"recovery_code": signer.RecoveryCodes[0]})},
		{route: "POST /api/v1/auth/enrollment", status: 200, action: "http.request.completed",
			req: jsonReq(v1+"/auth/enrollment", map[string]any{"token": enrollment.Token}), then: field(&totpSecret, "secret")},
		{route: "POST /api/v1/auth/enrollment/complete", status: 200, action: "user.enrolled",
			req: func(t *testing.T) (string, string, []byte) {
				return jsonReq(v1+"/auth/enrollment/complete", map[string]any{"token": enrollment.Token,
					"password": authtest.Password, "totp_code": authtest.Code(t, totpSecret, time.Now())})(t)
			}},
		{route: "POST /api/v1/auth/sign-out", status: 204, action: "auth.logout",
			req: jsonReq(v1+"/auth/sign-out", nil)},
		{route: "POST /api/v1/auth/sign-out-everywhere", status: 200, action: "auth.logout_everywhere",
			req: jsonReq(v1+"/auth/sign-out-everywhere", nil)},
		{route: "POST /api/v1/patients/:id/break-glass", status: 201, action: "access.break_glass.opened,policy.break_glass_opened",
			req: lazy(func() (string, any) {
				return v1 + "/patients/" + patientID + "/break-glass", map[string]any{"reason": "cardiac arrest on the corridor", "duration": "30m"}
			}), then: field(&grantID, "id")},
		{route: "POST /api/v1/break-glass/:id/review", status: 204, action: "access.break_glass.reviewed",
			req: lazy(func() (string, any) {
				return v1 + "/break-glass/" + grantID + "/review", map[string]any{"note": "justified"}
			})},
		{route: "POST /api/v1/service-accounts/:id/tokens", status: 201, action: "policy.token_issued",
			req:  jsonReq(v1+"/service-accounts/"+ci.ID.String()+"/tokens", map[string]any{"name": "nightly", "roles": []string{"quality"}}),
			then: field(&apiTokenID, "id")},
		// SMART on FHIR scopes of the token (fhir_smart.go): the API records its own event.
		{route: "PUT /api/v1/api-tokens/:id/smart-scopes", status: 200, action: "fhir.smart_scopes.set",
			req: lazy(func() (string, any) {
				return v1 + "/api-tokens/" + apiTokenID + "/smart-scopes", map[string]any{"scope": "user/Observation.read"}
			})},
		{route: "DELETE /api/v1/api-tokens/:id", status: 204, action: "policy.token_revoked",
			req: func(t *testing.T) (string, string, []byte) { return v1 + "/api-tokens/" + apiTokenID, "", nil }},
		// Audit: the checkpoint on demand records nothing of its own, so the middleware does.
		{"POST /api/v1/audit/checkpoint", 200, "http.request.completed",
			func(t *testing.T) (string, string, []byte) {
				chaintest.ShipAll(t, auditSvc)
				return v1 + "/audit/checkpoint", "", nil
			}, nil},
		// A full re-verification: the audit package records who started it (its result,
		// audit.verify.completed, comes later and names the run, not the request).
		{"POST /api/v1/audit/verify", 202, "audit.verify.started",
			func(t *testing.T) (string, string, []byte) { return v1 + "/audit/verify", "", nil },
			func(*testing.T, []byte) { auditSvc.WaitVerifications() }},
	}

	// The table covers exactly the state-changing routes the server mounts.
	listed := map[string]bool{}
	for _, r := range rows {
		if listed[r.route] {
			t.Fatalf("route %s has two rows", r.route)
		}
		listed[r.route] = true
	}
	mounted := map[string]bool{}
	for _, r := range s.echo.Routes() {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			continue
		}
		route := r.Method + " " + r.Path
		mounted[route] = true
		if !listed[route] {
			t.Errorf("state-changing route %s has no row in this test: decide whether its domain records an event (call Audited) or the middleware does, and add the row", route)
		}
	}
	for route := range listed {
		if !mounted[route] {
			t.Errorf("row %s names a route the server does not mount", route)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	type event struct{ action, actorID, sourceAddr string }
	eventsOf := func(requestID string) []event {
		t.Helper()
		rs, err := pool.Query(ctx, `SELECT action, coalesce(actor_id, ''), coalesce(source_addr, '')
			FROM audit_events WHERE request_id = $1 ORDER BY seq`, requestID)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out []event
		for rs.Next() {
			var e event
			if err := rs.Scan(&e.action, &e.actorID, &e.sourceAddr); err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, r := range rows {
		method := strings.SplitN(r.route, " ", 2)[0]
		path, ctype, body := r.req(t)
		req, err := http.NewRequest(method, ts.URL+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if ctype != "" {
			req.Header.Set(echo.HeaderContentType, ctype)
		}
		client, who := cl, user
		if as := sessions[r.route]; as != nil {
			client, who = as.cl, as.user
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != r.status {
			t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, answer, r.status)
		}
		rid := resp.Header.Get(echo.HeaderXRequestID)
		if rid == "" {
			t.Fatalf("%s %s: no %s in the answer", method, path, echo.HeaderXRequestID)
		}
		evs := eventsOf(rid)
		var got []string
		for _, e := range evs {
			got = append(got, e.action)
		}
		if strings.Join(got, ",") != r.action {
			t.Errorf("%s: audit events with its request id = %+v, want exactly %s", r.route, evs, r.action)
		}
		for _, e := range evs {
			if e.actorID == "" || e.sourceAddr != "127.0.0.1" {
				t.Errorf("%s: %s event has actor %q, source address %q; want an actor and 127.0.0.1",
					r.route, e.action, e.actorID, e.sourceAddr)
			}
			// A person's action names the person (never anonymous); devices and sign-in name
			// their own actors.
			if a := routeAccess[r.route]; (a.kind == accessPolicy || a.kind == accessSelf) && e.actorID != who.ID.String() {
				t.Errorf("%s: %s event has actor %q, want the signed-in user %s", r.route, e.action, e.actorID, who.ID)
			}
		}
		if r.then != nil {
			r.then(t, answer)
		}
	}
}
