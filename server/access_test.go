package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
	"github.com/vigilhealth/vigil/portal"
)

// fullServer is a server with every area mounted (core, devices, alarms, rules, audit, auth)
// on a real database, embedded Trillian and real sessions.
type fullServer struct {
	s      *Server
	ts     *httptest.Server
	env    *devicestest.Env
	auth   *auth.Service
	alarms *alarms.Service
	rules  *rules.Engine
}

func newFullServer(t *testing.T, mods ...func(*Config)) *fullServer {
	t.Helper()
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
	authSvc := authtest.New(t, pool, env.Rec, env.Ring.PHI(), nil, nil)
	// The portal is mounted as vigil serve mounts it, so its routes are in the walk below.
	portalSvc, err := portal.New(portal.Config{Auth: authSvc, Core: env.Core, Recorder: env.Rec, Alarms: alarmSvc, Rules: eng,
		Devices: env.Devices, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	passkeys, err := authSvc.NewPasskeys(auth.WebAuthnConfig{RPID: "vigil.test", Origins: []string{"https://vigil.test"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Pool: pool, Recorder: env.Rec, Core: env.Core, Devices: env.Devices, Alarms: alarmSvc, Rules: eng,
		Audit: auditSvc, Auth: authSvc, Portal: portalSvc, Passkeys: passkeys, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		RejectedPerSource: Limit{Rate: -1}}
	for _, mod := range mods {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return &fullServer{s: s, ts: ts, env: env, auth: authSvc, alarms: alarmSvc, rules: eng}
}

// Every route the server mounts declares what it needs in the route table (routeAccess), and
// every line of the table is a mounted route: a new route without a line fails here (and is
// refused at run time). Every policy permission a route needs is held by some role of the
// default policy (else nobody could ever use the route).
// Verifies: REQ-ACC-020
func TestEveryRouteHasAccess(t *testing.T) {
	t.Parallel()
	f := newFullServer(t)
	mounted := map[string]bool{}
	for _, r := range f.s.echo.Routes() {
		key := routeKey(r.Method, r.Path)
		mounted[key] = true
		if _, ok := routeAccess[key]; !ok {
			t.Errorf("route %s has no line in routeAccess (server/permissions.go): declare what it needs", key)
		}
	}
	held := map[string]bool{}
	for _, r := range auth.DefaultPolicy() {
		held[r.Object+" "+r.Action] = true
	}
	for key, a := range routeAccess {
		if !mounted[key] && !strings.Contains(key, "/auth/oidc/") { // OIDC routes: only with a relying party
			t.Errorf("routeAccess line %s names a route the server does not mount", key)
		}
		if a.kind == accessPolicy && !held[a.obj+" "+a.act] {
			t.Errorf("route %s needs (%s, %s), which no role of the default policy holds", key, a.obj, a.act)
		}
		if a.kind == 0 {
			t.Errorf("route %s has an empty access line", key)
		}
	}
}

// A route registered without an access line is refused (deny by default), not served.
// Verifies: REQ-ACC-020
func TestRouteWithoutAccessIsRefused(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	authSvc, cl := SignedIn(t, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Auth: authSvc})
	if err != nil {
		t.Fatal(err)
	}
	s.echo.GET("/api/v1/forgotten", func(c echo.Context) error { return c.String(http.StatusOK, "secret") })
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	resp, err := cl.Get(ts.URL + "/api/v1/forgotten")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if e := decodeError(t, resp.Body); resp.StatusCode != http.StatusForbidden || e.Code != CodeForbidden {
		t.Errorf("GET a route without access line = %d %s, want 403 forbidden", resp.StatusCode, e.Code)
	}
}

// roleUsers are the matrix's principals: one user per role, clinical roles on ward A.
var matrixRoles = []string{auth.RoleClinician, auth.RoleChargeNurse, auth.RoleDeviceTechnician, auth.RoleQuality, auth.RoleAdmin, auth.RoleAuditor}

// The authorization matrix, generated from the route table: every route that needs a policy
// decision × every role × (for patient routes) a patient of the role's own ward, of another
// ward, on the user's care team, and opened by break-glass; each decision must equal the
// expectation written below (by object and action). A route whose permission has no
// expectation fails: add its row.
// Verifies: REQ-ACC-021, REQ-ACC-022
func TestAuthorizationMatrix(t *testing.T) {
	t.Parallel()
	f := newFullServer(t)
	ctx := context.Background()
	wardA, wardB := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	users := map[string]*authtest.User{}
	for _, role := range matrixRoles {
		d := auth.AllDomains
		if ri, _ := auth.LookupRole(role); ri.Clinical {
			d = auth.WardDomain(wardA)
		}
		users[role] = authtest.Enroll(t, f.auth, role+"@matrix.example", authtest.Grant{Role: role, Domain: d})
	}
	// Break-glass: every clinical user opens patient "glass" (on ward B).
	glass := uuid.Must(uuid.NewV7())
	for _, role := range []string{auth.RoleClinician, auth.RoleChargeNurse} {
		p := &auth.Principal{Kind: "user", ID: users[role].ID, Subject: auth.UserSubject(users[role].ID), AuthMethod: "test"}
		if _, err := f.auth.BreakGlass(ctx, p, authtest.Admin, glass, "matrix: emergency access test", 0); err != nil {
			t.Fatal(err)
		}
	}
	type relation string
	const (
		own      relation = "own_ward"
		other    relation = "other_ward"
		team     relation = "care_team"
		brokeIn  relation = "break_glass"
		noTarget relation = "-"
	)
	targetOf := func(obj string, rel relation, u *authtest.User) auth.Target {
		switch rel {
		case own:
			return auth.Target{Object: obj, Ward: wardA, Patient: uuid.New()}
		case other:
			return auth.Target{Object: obj, Ward: wardB, Patient: uuid.New()}
		case team:
			return auth.Target{Object: obj, Ward: wardB, Patient: uuid.New(), CareTeam: []string{u.ID.String()}}
		case brokeIn:
			return auth.Target{Object: obj, Ward: wardB, Patient: glass}
		}
		return auth.Target{Object: obj}
	}
	clinical := []string{auth.RoleClinician, auth.RoleChargeNurse}
	nurse := []string{auth.RoleChargeNurse}
	// expect: permission → relation → roles allowed.
	expect := map[string]map[relation][]string{
		"patient read":           {own: clinical, team: clinical, brokeIn: clinical},
		"observation read":       {own: clinical, team: clinical, brokeIn: clinical},
		"observation chart":      {own: clinical, team: clinical},
		"alarm read":             {own: clinical, team: clinical, brokeIn: clinical},
		"alarm acknowledge":      {own: clinical, team: clinical, brokeIn: clinical},
		"alarm resolve":          {own: clinical, team: clinical},
		"alarm silence":          {own: nurse},
		"care_team read":         {own: clinical, team: clinical},
		"care_team manage":       {own: nurse},
		"patient write":          {own: nurse},
		"rule write":             {own: nurse},
		"alarm list":             {noTarget: clinical},
		"patient list":           {noTarget: clinical},
		"stream subscribe":       {noTarget: clinical},
		"break_glass open":       {noTarget: clinical},
		"rule read":              {noTarget: clinical},
		"site read":              {noTarget: {auth.RoleClinician, auth.RoleChargeNurse, auth.RoleDeviceTechnician, auth.RoleAdmin}},
		"site manage":            {noTarget: {auth.RoleAdmin}},
		"device read":            {noTarget: {auth.RoleDeviceTechnician, auth.RoleAdmin}},
		"device manage":          {noTarget: {auth.RoleDeviceTechnician}},
		"device enroll":          {noTarget: {auth.RoleDeviceTechnician}},
		"audit read":             {noTarget: {auth.RoleQuality, auth.RoleAuditor}},
		"audit verify":           {noTarget: {auth.RoleAuditor}},
		"audit export":           {noTarget: {auth.RoleQuality}},
		"break_glass review":     {noTarget: {auth.RoleQuality}},
		"webhook manage":         {noTarget: {auth.RoleAdmin}},
		"service_account read":   {noTarget: {auth.RoleAdmin}},
		"service_account manage": {noTarget: {auth.RoleAdmin}},
	}
	keys := make([]string, 0, len(routeAccess))
	for k := range routeAccess {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	enf := f.auth.Enforcer()
	cells := 0
	for _, key := range keys {
		a := routeAccess[key]
		if a.kind != accessPolicy {
			continue
		}
		perm := a.obj + " " + a.act
		rels := []relation{noTarget}
		switch a.target {
		case targetPatient, targetAlarm, targetPatientMove:
			rels = []relation{own, other, team, brokeIn}
		case targetPatientQuery: // the list, and the list narrowed to one patient (a read)
			rels = []relation{noTarget}
		case targetBodyWard, targetWard:
			rels = []relation{own, other}
		}
		want, ok := expect[perm]
		if !ok {
			t.Errorf("route %s needs %s: the matrix has no row for it (add one to expect)", key, perm)
			continue
		}
		for _, rel := range rels {
			for _, role := range matrixRoles {
				u := users[role]
				tg := targetOf(a.obj, rel, u)
				if a.target == targetBodyWard || a.target == targetWard {
					tg.Patient = uuid.Nil
				}
				p := &auth.Principal{Kind: "user", ID: u.ID, Subject: auth.UserSubject(u.ID), AuthMethod: "test"}
				_, err := enf.Allow(p, a.act, tg)
				got := err == nil
				if w := slices.Contains(want[rel], role); got != w {
					t.Errorf("%s as %s on %s patient: allowed = %v, want %v", key, role, rel, got, w)
				}
				cells++
			}
		}
	}
	t.Logf("%d routes × roles × patient relations decided", cells)
}

// The issue's acceptance path over real HTTP with real sessions: without a session every
// non-public route answers 401 unauthenticated; a clinician of ward A reads a ward-A patient
// (200, the read audited with the patient), not a ward-B patient (403 forbidden, audited as
// access.denied) until they break the glass (201, audited, notified on the stream), after
// which the read is allowed on the break-glass basis (audited with the grant); list endpoints
// return only the caller's patients; the CSRF token is required on state-changing requests.
// Verifies: REQ-ACC-023, REQ-ACC-024, REQ-ACC-025, REQ-ACC-026, REQ-ACC-027
// Verifies: REQ-POR-088
func TestClinicianScopeBreakGlassAndReadAudit(t *testing.T) {
	t.Parallel()
	f := newFullServer(t)
	ctx := context.Background()
	core0 := f.env.Core
	admin := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "os:test", AuthMethod: "test"}, RequestID: "test"}
	site, err := core0.CreateSite(ctx, admin, "North")
	if err != nil {
		t.Fatal(err)
	}
	wardA, err := core0.CreateWard(ctx, admin, site.ID, "ICU")
	if err != nil {
		t.Fatal(err)
	}
	wardB, err := core0.CreateWard(ctx, admin, site.ID, "Surgery")
	if err != nil {
		t.Fatal(err)
	}
	pa, err := core0.CreatePatient(ctx, admin, core.PatientPHI{MRN: "A-1", GivenName: "Ann", FamilyName: "A"}, &wardA.ID)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := core0.CreatePatient(ctx, admin, core.PatientPHI{MRN: "B-1", GivenName: "Ben", FamilyName: "B"}, &wardB.ID)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := core0.CreatePatient(ctx, admin, core.PatientPHI{MRN: "B-2", GivenName: "Cy", FamilyName: "C"}, &wardB.ID)
	if err != nil {
		t.Fatal(err)
	}
	clin, clinUser := SignedInUser(t, f.auth, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(wardA.ID)})
	if _, err := core0.AddCareTeamMember(ctx, admin, pc.ID, clinUser.ID.String(), "nurse"); err != nil {
		t.Fatal(err)
	}
	adm, _ := SignedInUser(t, f.auth, authtest.Grant{Role: auth.RoleAdmin, Domain: auth.AllDomains})
	url := f.ts.URL + "/api/v1"

	call := func(cl *http.Client, method, path string, body any) (int, string, []byte, string) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, url+path, rd)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e errorBody
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, e.Error.Code, b, resp.Header.Get("X-Request-Id")
	}
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := f.env.Pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// No session: 401 unauthenticated on every route that needs one (PHI routes included).
	for key, a := range routeAccess {
		if a.kind == accessPublic || a.kind == accessDevice || strings.Contains(key, "/auth/oidc/") {
			continue
		}
		method, path, _ := strings.Cut(key, " ")
		path = strings.NewReplacer(":id", pa.ID.String(), ":clinician", "x", ":hash", strings.Repeat("ab", 32)).Replace(path)
		req, _ := http.NewRequest(method, f.ts.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		e := decodeError(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || e.Code != CodeUnauthenticated {
			t.Errorf("%s without a session = %d %s, want 401 unauthenticated", key, resp.StatusCode, e.Code)
		}
	}
	// A tampered cookie is the same 401.
	bad := authtest.Client(f.auth, auth.Session{Token: "vgs_" + strings.Repeat("A", 43)})
	if st, code, _, _ := call(bad, "GET", "/patients/"+pa.ID.String(), nil); st != 401 || code != CodeUnauthenticated {
		t.Errorf("GET patient with a tampered cookie = %d %s, want 401 unauthenticated", st, code)
	}

	// Own ward: read, audited with the patient and the user.
	st, _, _, rid := call(clin, "GET", "/patients/"+pa.ID.String(), nil)
	if st != 200 {
		t.Fatalf("clinician of ward A: GET ward-A patient = %d, want 200", st)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'access.phi.read'
		AND object_type = 'patient' AND object_id = $2 AND actor_id = $3 AND payload->>'what' = 'record'
		AND payload->>'basis' = 'ward'`, rid, pa.ID.String(), clinUser.ID.String()); n != 1 {
		t.Errorf("access.phi.read events of the ward-A read = %d, want 1 naming patient, user and basis", n)
	}
	// Care team on another ward: allowed.
	if st, _, _, _ := call(clin, "GET", "/patients/"+pc.ID.String()+"/care-team", nil); st != 200 {
		t.Errorf("GET care team of a care-team patient on ward B = %d, want 200", st)
	}
	// Other ward: 403, audited as access.denied with the patient.
	st, code, _, rid := call(clin, "GET", "/patients/"+pb.ID.String(), nil)
	if st != 403 || code != CodeForbidden {
		t.Fatalf("clinician of ward A: GET ward-B patient = %d %s, want 403 forbidden", st, code)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'access.denied'
		AND object_id = $2 AND actor_id = $3`, rid, pb.ID.String(), clinUser.ID.String()); n != 1 {
		t.Errorf("access.denied events = %d, want 1", n)
	}
	// A stream of the other ward's patient: 403, its access.denied the request's one record.
	st, code, _, rid = call(clin, "GET", "/stream?patient_id="+pb.ID.String(), nil)
	if st != 403 || code != CodeForbidden {
		t.Errorf("clinician of ward A: stream of a ward-B patient = %d %s, want 403 forbidden", st, code)
	}
	if n, all := count(`SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'access.denied'
		AND object_id = $2`, rid, pb.ID.String()), count(`SELECT count(*) FROM audit_events WHERE request_id = $1`, rid); n != 1 || all != 1 {
		t.Errorf("audit events of the refused stream = %d, of which access.denied %d; want exactly that one", all, n)
	}
	// An administrator cannot read vitals.
	if st, _, _, _ := call(adm, "GET", "/patients/"+pa.ID.String()+"/latest", nil); st != 403 {
		t.Errorf("admin: GET latest observations = %d, want 403", st)
	}
	// Lists hold only the caller's patients (ward A and the care-team patient).
	st, _, body, _ := call(clin, "GET", "/patients", nil)
	var list struct {
		Patients []core.Patient `json:"patients"`
	}
	if err := json.Unmarshal(body, &list); err != nil || st != 200 {
		t.Fatalf("GET /patients = %d %s", st, body)
	}
	var got []uuid.UUID
	for _, p := range list.Patients {
		got = append(got, p.ID)
	}
	if len(got) != 2 || !slices.Contains(got, pa.ID) || !slices.Contains(got, pc.ID) {
		t.Errorf("GET /patients as ward-A clinician = %v, want %s and %s only", got, pa.ID, pc.ID)
	}
	if st, _, body, _ := call(clin, "GET", "/patients?mrn=B-1", nil); st != 200 || strings.Contains(string(body), pb.ID.String()) {
		t.Errorf("GET /patients?mrn= of a ward-B patient = %d %s, want 200 and no patient", st, body)
	}
	if st, _, _, _ := call(clin, "GET", "/alarms?patient_id="+pb.ID.String(), nil); st != 403 {
		t.Errorf("GET /alarms?patient_id= of a ward-B patient = %d, want 403", st)
	}

	// CSRF: the same session without its token cannot change anything.
	noCSRF := &http.Client{Transport: &authtest.Transport{CookieName: f.auth.Config().Session.CookieName,
		Session: clin.Transport.(*authtest.Transport).Session, NoCSRF: true}}
	if st, code, _, _ := call(noCSRF, "POST", "/patients/"+pb.ID.String()+"/break-glass", map[string]any{"reason": "cardiac arrest in corridor"}); st != 403 || code != "csrf_invalid" {
		t.Errorf("break-glass without the CSRF token = %d %s, want 403 csrf_invalid", st, code)
	}

	// Break the glass: notified on the stream, then the read is allowed and audited as such.
	sub := core0.Hub().Subscribe(core.Filter{Types: map[string]bool{"access.break_glass.opened": true}})
	defer sub.Close()
	if st, code, _, _ := call(clin, "POST", "/patients/"+pb.ID.String()+"/break-glass", map[string]any{"reason": "short"}); st != 400 || code != "break_glass_reason_required" {
		t.Errorf("break-glass with a short reason = %d %s, want 400 break_glass_reason_required", st, code)
	}
	st, _, body, _ = call(clin, "POST", "/patients/"+pb.ID.String()+"/break-glass", map[string]any{"reason": "cardiac arrest in the corridor", "duration": "30m"})
	var g auth.BreakGlassGrant
	if err := json.Unmarshal(body, &g); err != nil || st != 201 || g.ID == uuid.Nil {
		t.Fatalf("POST break-glass = %d %s, want 201 with the grant", st, body)
	}
	select {
	case ev := <-sub.C:
		if ev.PatientID != pb.ID || strings.Contains(string(ev.Data), "cardiac") {
			t.Errorf("break-glass notification = %+v, want the patient, without the reason", ev)
		}
	case <-time.After(10 * time.Second):
		t.Error("no break-glass notification on the stream")
	}
	st, _, _, rid = call(clin, "GET", "/patients/"+pb.ID.String(), nil)
	if st != 200 {
		t.Fatalf("GET ward-B patient after break-glass = %d, want 200", st)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'access.phi.read'
		AND payload->>'basis' = 'break_glass' AND payload->>'break_glass' = $2`, rid, g.ID.String()); n != 1 {
		t.Errorf("access.phi.read on the break-glass basis naming the grant = %d, want 1", n)
	}
	if n := count(`SELECT count(*) FROM audit_events WHERE action = 'access.break_glass.opened' AND object_id = $1
		AND actor_id = $2`, pb.ID.String(), clinUser.ID.String()); n != 1 {
		t.Errorf("access.break_glass.opened events = %d, want 1", n)
	}
	// Not everything: resolving an alarm or writing stays refused on the break-glass basis.
	if st, _, _, _ := call(clin, "POST", "/patients/"+pb.ID.String()+"/discharge", map[string]any{}); st != 403 {
		t.Errorf("discharge a break-glass patient = %d, want 403", st)
	}
}

// Sign-in over HTTP with a password and a TOTP code under a controlled clock; the session
// cookie is HttpOnly, SameSite=Strict; the idle timeout ends it (401 unauthenticated, the
// reason in the audit trail); sign-out ends it at once; API tokens authenticate service
// accounts within their roles.
// Verifies: REQ-ACC-028, REQ-ACC-029
func TestSignInSessionsAndTokens(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	rec := audittest.Recorder(t, pool, nil)
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	clock := testclock.New(now)
	authSvc := authtest.New(t, pool, rec, keystest.LocalRing(t, nil).PHI(), clock.Now, nil)
	s, err := New(Config{Pool: pool, Recorder: rec, Auth: authSvc, RejectedPerSource: Limit{Rate: -1}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	u := authtest.Enroll(t, authSvc, "quality@test.example", authtest.Grant{Role: auth.RoleQuality, Domain: auth.AllDomains})
	clock.Add(30 * time.Second)
	post := func(path string, body any, hdr map[string]string) *http.Response {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", ts.URL+"/api/v1"+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// Password only: the second factor is required.
	resp := post("/auth/sign-in", map[string]any{"email": u.Email, "password": authtest.Password}, nil)
	if e := decodeError(t, resp.Body); resp.StatusCode != 401 || e.Code != "mfa_required" {
		t.Errorf("sign-in without TOTP = %d %s, want 401 mfa_required", resp.StatusCode, e.Code)
	}
	resp.Body.Close()
	resp = post("/auth/sign-in", map[string]any{"email": u.Email, "password": "wrong password!", "totp_code": authtest.Code(t, u.TOTPSecret, clock.Now())}, nil)
	if e := decodeError(t, resp.Body); resp.StatusCode != 401 || e.Code != "invalid_credentials" {
		t.Errorf("sign-in with a wrong password = %d %s, want 401 invalid_credentials", resp.StatusCode, e.Code)
	}
	resp.Body.Close()
	// Lockout: after five failures for a name, 429 account_locked with Retry-After.
	for i := range 6 {
		resp := post("/auth/sign-in", map[string]any{"email": "nobody@test.example", "password": "wrong password!"}, nil)
		e := decodeError(t, resp.Body)
		resp.Body.Close()
		if i == 5 && (resp.StatusCode != 429 || e.Code != "account_locked" || resp.Header.Get("Retry-After") == "") {
			t.Errorf("sixth failed sign-in = %d %s Retry-After %q, want 429 account_locked with Retry-After",
				resp.StatusCode, e.Code, resp.Header.Get("Retry-After"))
		}
	}
	resp = post("/auth/sign-in", map[string]any{"email": u.Email, "password": authtest.Password, "totp_code": authtest.Code(t, u.TOTPSecret, clock.Now())}, nil)
	var sa sessionAnswer
	if err := json.NewDecoder(resp.Body).Decode(&sa); err != nil || resp.StatusCode != 200 || sa.CSRFToken == "" {
		t.Fatalf("sign-in = %d %+v, want 200 with a CSRF token", resp.StatusCode, sa)
	}
	resp.Body.Close()
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == authSvc.Config().Session.CookieName {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" {
		t.Fatalf("session cookie = %+v, want HttpOnly, SameSite=Strict, Path=/", cookie)
	}
	sess := auth.Session{Token: cookie.Value}
	cl := authtest.Client(authSvc, sess)
	me := func(cl *http.Client) int {
		t.Helper()
		resp, err := cl.Get(ts.URL + "/api/v1/auth/me")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := me(cl); st != 200 {
		t.Fatalf("GET /auth/me = %d, want 200", st)
	}
	// Idle for the timeout: the session is over.
	clock.Add(authSvc.Config().Session.IdleTimeout + time.Second)
	resp, err = cl.Get(ts.URL + "/api/v1/auth/me")
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, resp.Body); resp.StatusCode != 401 || e.Code != CodeUnauthenticated {
		t.Errorf("request after the idle timeout = %d %s, want 401 unauthenticated", resp.StatusCode, e.Code)
	}
	resp.Body.Close()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_events WHERE action = 'auth.session.rejected'
		AND reason = 'session_idle_timeout' AND actor_id = $1`, u.ID.String()).Scan(&n); err != nil || n != 1 {
		t.Errorf("auth.session.rejected (session_idle_timeout) events = %d (%v), want 1", n, err)
	}
	// A fresh session, then sign-out: the cookie stops working at once.
	cl2 := authtest.Client(authSvc, authtest.SignIn(t, authSvc, u))
	resp, err = cl2.Post(ts.URL+"/api/v1/auth/sign-out", "application/json", nil)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("sign-out = %v %v, want 204", resp.StatusCode, err)
	}
	resp.Body.Close()
	if st := me(cl2); st != 401 {
		t.Errorf("GET /auth/me after sign-out = %d, want 401", st)
	}

	// API token of a service account holding quality: may read the audit trail, not patients.
	ctx := context.Background()
	acct, err := authSvc.CreateServiceAccount(ctx, authtest.Admin, "ci")
	if err != nil {
		t.Fatal(err)
	}
	if err := authSvc.GrantRole(ctx, authtest.Admin, auth.ServiceSubject(acct.ID), auth.RoleQuality, auth.AllDomains); err != nil {
		t.Fatal(err)
	}
	tok, err := authSvc.IssueAPIToken(ctx, authtest.Admin, acct.ID, "nightly", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	bearer := &http.Client{Transport: &authtest.BearerTransport{Token: tok.Token}}
	if st := me(bearer); st != 200 {
		t.Errorf("GET /auth/me with an API token = %d, want 200", st)
	}
	resp, err = bearer.Get(ts.URL + "/api/v1/service-accounts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("API token with quality: GET /service-accounts = %d, want 403", resp.StatusCode)
	}
	if err := authSvc.RevokeAPIToken(ctx, authtest.Admin, tok.ID); err != nil {
		t.Fatal(err)
	}
	if st := me(bearer); st != 401 {
		t.Errorf("GET /auth/me with a revoked token = %d, want 401", st)
	}
}
