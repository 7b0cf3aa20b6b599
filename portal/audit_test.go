package portal_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/rules"
)

// staff creates a user holding a non-clinical role everywhere ("*"), enrolled with password
// and TOTP; it returns the e-mail address, the TOTP secret and the display name.
func (s *stack) staff(t testing.TB, role string) (email, secret, name string) {
	t.Helper()
	email = role + "-" + uuid.NewString()[:8] + "@example.org"
	name = "Staff " + email[:len(role)+9]
	o := auth.Origin{Actor: admin.Actor, RequestID: "test"}
	u, err := s.auth.CreateUser(s.Ctx, o, auth.Profile{Email: email, DisplayName: name})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.auth.GrantRole(s.Ctx, o, auth.UserSubject(u.ID), role, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	en, err := s.auth.IssueEnrollment(s.Ctx, o, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := s.auth.StartEnrollment(s.Ctx, auth.Origin{}, en.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.auth.CompleteEnrollment(s.Ctx, auth.Origin{}, en.Token, password, s.code(t, offer.Secret)); err != nil {
		t.Fatal(err)
	}
	s.Clock.Add(30 * time.Second)
	return email, offer.Secret, name
}

// signedInAs signs a user in through the portal's form and returns the client with its session.
func (s *stack) signedInAs(t testing.TB, email, secret string) *http.Client {
	t.Helper()
	c := client(t)
	res := s.signIn(t, c, email, password, s.code(t, secret))
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in %s = %d, want 303", email, res.StatusCode)
	}
	s.Clock.Add(30 * time.Second) // the next sign-in needs a fresh TOTP step
	return c
}

// session is the session token in c's cookie jar.
func (s *stack) session(t testing.TB, c *http.Client) string {
	t.Helper()
	u, _ := url.Parse(s.ts.URL)
	for _, k := range c.Jar.Cookies(u) {
		if k.Name == s.auth.Config().Session.CookieName {
			return k.Value
		}
	}
	t.Fatal("no session cookie")
	return ""
}

// raiseAlarm has the rules engine raise a low-SpO2 alarm for the patient and returns its id.
func (s *stack) raiseAlarm(t testing.TB, patient uuid.UUID) uuid.UUID {
	t.Helper()
	now := s.Clock.Now()
	res, err := s.rules.Evaluate(s.Ctx, patient, []rules.Observation{
		{PatientID: patient, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now.Add(-time.Minute)},
		{PatientID: patient, Code: rules.CodeSpO2, Value: 84, Unit: "%", EffectiveAt: now},
	})
	if err != nil || len(res.Transitions) == 0 {
		t.Fatalf("Evaluate = %v, %v; want an alarm", res.Transitions, err)
	}
	return res.Transitions[0].Alarm.ID
}

// acknowledgeViaAPI acknowledges the alarm through the server's API with c's session (cookie
// and CSRF header, as the portal's own pages do).
func (s *stack) acknowledgeViaAPI(t testing.TB, c *http.Client, alarm uuid.UUID) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.ts.URL+"/api/v1/alarms/"+alarm.String()+"/acknowledge",
		strings.NewReader(`{"note":"seen at the bedside"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(auth.CSRFHeader, auth.CSRFToken(s.session(t, c)))
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("acknowledge = %d %s", res.StatusCode, b)
	}
}

// TestAuditBrowser: a clinician's acknowledgement, found by action in the audit browser with
// the clinician's name, its batch and leaf index, and its proof verified under the latest
// checkpoint; the patient's access history; an audit pack of the patient that verifies
// offline; coded errors next to the fields; clinicians refused and not shown the link.
// Verifies: REQ-POR-030, REQ-POR-031, REQ-POR-032, REQ-POR-033
func TestAuditBrowser(t *testing.T) {
	s := newStack(t)
	nurseEmail, nurseSecret := s.clinician(t, auth.RoleClinician, s.ward.ID)
	nurse := s.signedInAs(t, nurseEmail, nurseSecret)
	u, err := s.auth.UserByEmail(s.Ctx, nurseEmail)
	if err != nil {
		t.Fatal(err)
	}
	nurseName := u.Profile.DisplayName
	start := s.Clock.Now().Add(-time.Hour)

	p1 := s.patients[1].ID
	alarm := s.raiseAlarm(t, p1)
	s.acknowledgeViaAPI(t, nurse, alarm)
	if res := s.get(t, "/ward/tiles/"+p1.String(), nurse); res.StatusCode != http.StatusOK { // a read of p1's record
		t.Fatalf("tile = %d", res.StatusCode)
	} else {
		res.Body.Close()
	}
	cp := chaintest.ShipAll(t, s.chain)

	// A clinician may not open the audit browser, and is not offered it.
	res := s.get(t, "/audit", nurse)
	if b := body(t, res); res.StatusCode != http.StatusForbidden || !strings.Contains(b, `data-code="forbidden"`) {
		t.Errorf("clinician GET /audit = %d, want 403 page:\n%s", res.StatusCode, b)
	}
	if b := body(t, s.get(t, "/", nurse)); strings.Contains(b, `href="/audit"`) {
		t.Error("the clinician's navigation links to the audit browser")
	}
	for _, path := range []string{"/audit/events/" + uuid.NewString(), "/audit/patients/" + p1.String(), "/audit/export?from=2020-01-01T00:00"} {
		if res := s.get(t, path, nurse); res.StatusCode != http.StatusForbidden {
			t.Errorf("clinician GET %s = %d, want 403", path, res.StatusCode)
		}
	}
	// Without a session: the sign-in page.
	if res := s.get(t, "/audit", nil); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/signin" {
		t.Errorf("GET /audit without a session = %d %s", res.StatusCode, res.Header.Get("Location"))
	}

	qEmail, qSecret, qName := s.staff(t, auth.RoleQuality)
	q := s.signedInAs(t, qEmail, qSecret)
	if b := body(t, s.get(t, "/", q)); !strings.Contains(b, `href="/audit"`) {
		t.Error("the quality officer's navigation lacks the audit browser")
	}

	// Search by action and actor: the acknowledgement, with the clinician's name.
	res = s.get(t, "/audit?"+url.Values{"action": {"alarm.acknowledged"}, "actor": {nurseEmail}}.Encode(), q)
	list := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /audit = %d:\n%s", res.StatusCode, list)
	}
	rows := regexp.MustCompile(`<tr data-event="([0-9a-f-]{36})" data-action="alarm.acknowledged">`).FindAllStringSubmatch(list, -1)
	if len(rows) != 1 || !strings.Contains(list, nurseName) || !strings.Contains(list, "alarm "+alarm.String()) {
		t.Fatalf("search result: %d rows, want 1 by %q on alarm %s:\n%s", len(rows), nurseName, alarm, list)
	}
	if want := fmt.Sprintf("checkpoint %d, tree size %d", cp.ID, cp.Size); !strings.Contains(list, want) {
		t.Errorf("result page lacks %q", want)
	}
	evID := rows[0][1]
	if !regexp.MustCompile(`(?s)<tr data-event="` + evID + `".*?<td class="leaf">\d+</td>\s*<td class="proof" data-code="verified">`).MatchString(list) {
		t.Errorf("the row lacks its leaf index and verified proof:\n%s", list)
	}

	// The event: batch, leaf index, proof verified under the latest checkpoint.
	res = s.get(t, "/audit/events/"+evID, q)
	page := body(t, res)
	pf, err := s.chain.Event(s.Ctx, uuid.MustParse(evID))
	if err != nil || pf.Status != "proven" {
		t.Fatalf("chain.Event = %v, %v", pf.Status, err)
	}
	for _, want := range []string{
		fmt.Sprintf(`data-code="verified"><strong>Checked by the server:</strong> Verified under checkpoint %d, tree size %d`, cp.ID, cp.Size),
		fmt.Sprintf(`<dd id="leaf-index">%d</dd>`, *pf.Batch.LeafIndex),
		fmt.Sprintf(`<dd id="batch">%s (%d events)</dd>`, pf.Batch.ID, pf.Batch.Count),
		fmt.Sprintf(`<dd id="batch-index">%d</dd>`, pf.Batch.Index),
		nurseName, `data-proof-url="/audit/events/` + evID + `/proof"`, "seen at the bedside",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("event page lacks %q:\n%s", want, page)
		}
	}
	// The raw proof the browser checks.
	res = s.get(t, "/audit/events/"+evID+"/proof", q)
	var raw struct {
		Status      string `json:"status"`
		TreeSize    uint64 `json:"tree_size"`
		LeafIndex   int64  `json:"leaf_index"`
		VerifierKey string `json:"verifier_key"`
		Checkpoint  string `json:"checkpoint"`
	}
	if err := json.Unmarshal([]byte(body(t, res)), &raw); err != nil || raw.Status != "proven" || raw.TreeSize != cp.Size ||
		raw.LeafIndex != *pf.Batch.LeafIndex || raw.VerifierKey != s.chain.VerifierKey() || raw.Checkpoint != cp.Note {
		t.Errorf("proof JSON = %+v, %v", raw, err)
	}

	if !strings.Contains(list, `id="export-hint"`) || strings.Contains(list, `id="export"`) {
		t.Error("a search without a start offers an export that would be refused")
	}
	page = body(t, s.get(t, "/audit?"+url.Values{"action": {"alarm.acknowledged"}, "from": {start.UTC().Format("2006-01-02T15:04")}}.Encode(), q))
	if !strings.Contains(page, `<a id="export" class="button" href="/audit/export?from=`) {
		t.Error("a search with a start offers no export")
	}

	// Who viewed this patient's record.
	page = body(t, s.get(t, "/audit/patients/"+p1.String(), q))
	if !strings.Contains(page, `data-action="access.phi.read"`) || !strings.Contains(page, nurseName) {
		t.Errorf("access history of %s lacks the clinician's read:\n%s", p1, page)
	}
	if strings.Contains(page, "Otto") || strings.Contains(page, s.other.ID.String()) {
		t.Error("access history shows another patient")
	}

	// An audit pack of the patient: verifies offline, holds only the patient's events.
	res = s.get(t, "/audit/export?"+url.Values{"from": {start.UTC().Format("2006-01-02T15:04")}, "patient": {p1.String()}}.Encode(), q)
	pack := body(t, res)
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Disposition"), "attachment;") {
		t.Fatalf("export = %d %q:\n%.300s", res.StatusCode, res.Header.Get("Content-Disposition"), pack)
	}
	rep, err := chain.VerifyPack([]byte(pack), s.chain.VerifierKey())
	if err != nil {
		t.Fatalf("VerifyPack = %v", err)
	}
	if rep.Object != "patient "+p1.String() || len(rep.Events) == 0 {
		t.Errorf("pack object %q with %d events, want patient %s", rep.Object, len(rep.Events), p1)
	}
	for _, e := range rep.Events {
		if e.ObjectType != "patient" {
			t.Errorf("pack holds a %s event (%s)", e.ObjectType, e.Action)
		}
	}
	if _, err := chain.VerifyPack([]byte(strings.Replace(pack, `"pending":`, `"pending": `, 1)), s.chain.VerifierKey()); err == nil {
		t.Error("a changed pack verifies")
	}

	// Bad input: coded errors next to the fields, nothing searched.
	res = s.get(t, "/audit?"+url.Values{"from": {"yesterday"}, "action": {"Alarm Ack!"}, "actor": {"nobody@example.org"}, "patient": {"MRN-NOPE"}}.Encode(), q)
	page = body(t, res)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("bad search = %d, want 422", res.StatusCode)
	}
	for field, code := range map[string]string{"from": "invalid_time", "action": "invalid_action", "actor": "unknown_actor", "patient": "unknown_patient"} {
		if !strings.Contains(page, fmt.Sprintf(`<p id="q-%s-error" class="field-error" data-code="%s">`, field, code)) ||
			!regexp.MustCompile(`id="q-`+field+`"[^>]*aria-describedby="q-`+field+`-hint q-`+field+`-error" aria-invalid="true"`).MatchString(page) {
			t.Errorf("bad search: field %s lacks its error %s", field, code)
		}
	}
	if strings.Contains(page, "<table") {
		t.Error("a refused search shows results")
	}
	res = s.get(t, "/audit?from=2026-01-02T10:00&to=2026-01-01T10:00", q)
	if page = body(t, res); !strings.Contains(page, `data-code="range_reversed"`) {
		t.Error("a reversed range is not refused")
	}
	if res = s.get(t, "/audit/export?to=2026-01-01T10:00", q); res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body(t, res), `data-code="from_required"`) {
		t.Errorf("export without a start = %d", res.StatusCode)
	}

	// The quality officer's reads are audited too, as the API's are.
	s.Clock.Add(time.Second)
	chaintest.ShipAll(t, s.chain)
	qu, _ := s.auth.UserByEmail(s.Ctx, qEmail)
	reads, err := s.chain.Events(s.Ctx, chain.EventFilter{ActorID: qu.ID.String(), Action: "access.audit.read"})
	if err != nil || len(reads.Events) < 4 {
		t.Errorf("access.audit.read events of the quality officer = %d, %v; want ≥ 4", len(reads.Events), err)
	}
	exp, err := s.chain.Events(s.Ctx, chain.EventFilter{ActorID: qu.ID.String(), Action: "audit.pack.exported"})
	if err != nil || len(exp.Events) != 1 {
		t.Errorf("audit.pack.exported events = %d, %v; want 1", len(exp.Events), err)
	}
	_ = qName
}
