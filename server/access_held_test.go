package server

import (
	"context"
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
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// wardsFixture is a server over a real database with two wards, patients on each, and a
// signed-in clinician of ward A.
type wardsFixture struct {
	pool         *pgxpool.Pool
	core         *core.Service
	s            *Server
	ts           *httptest.Server
	auth         *auth.Service
	wardA, wardB core.Ward
	onA, onB     []core.Patient
	clinA        *http.Client
	clinAUser    *authtest.User
	base         time.Time
}

func newWardsFixture(t *testing.T, perWard int, cfg func(*Config)) *wardsFixture {
	t.Helper()
	pool := testdb.New(t)
	ctx := context.Background()
	rec := audittest.Recorder(t, pool, nil)
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: newCoreTestSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"}, RequestID: "test"}
	f := &wardsFixture{pool: pool, core: svc, base: time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)}
	site, err := svc.CreateSite(ctx, by, "S")
	if err != nil {
		t.Fatal(err)
	}
	if f.wardA, err = svc.CreateWard(ctx, by, site.ID, "A"); err != nil {
		t.Fatal(err)
	}
	if f.wardB, err = svc.CreateWard(ctx, by, site.ID, "B"); err != nil {
		t.Fatal(err)
	}
	for i := range perWard {
		for _, w := range []*core.Ward{&f.wardA, &f.wardB} {
			p, err := svc.CreatePatient(ctx, by, core.PatientPHI{MRN: w.Name + "-" + uuid.NewString()[:8], GivenName: "G", FamilyName: w.Name}, &w.ID)
			if err != nil {
				t.Fatal(err)
			}
			if w == &f.wardA {
				f.onA = append(f.onA, p)
			} else {
				f.onB = append(f.onB, p)
			}
			var h [32]byte
			_, _ = rand.Read(h[:])
			batch := core.Batch{PatientID: p.ID, Provenance: core.Provenance{DeviceID: "d", KeyID: "d/1", UploadHash: h, Transport: "http"}}
			batch.Samples = append(batch.Samples, core.Sample{Code: core.LOINCHeartRate, Value: float64(60 + i), Unit: "/min", Time: f.base.Add(time.Minute)})
			if _, err := svc.Ingest(ctx, batch); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.auth = authtest.New(t, pool, rec, newCoreTestSealer(t), nil, nil)
	f.clinA, f.clinAUser = SignedInUser(t, f.auth, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(f.wardA.ID)})
	c := Config{Pool: pool, Recorder: rec, Core: svc, Auth: f.auth, RejectedPerSource: Limit{Rate: -1},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if cfg != nil {
		cfg(&c)
	}
	if f.s, err = New(c); err != nil {
		t.Fatal(err)
	}
	f.ts = httptest.NewServer(f.s.Handler())
	t.Cleanup(f.ts.Close)
	return f
}

func (f *wardsFixture) observationsURL(p uuid.UUID) string {
	return f.ts.URL + "/api/v1/patients/" + p.String() + "/observations?code=8867-4&from=" +
		f.base.Format(time.RFC3339) + "&to=" + f.base.Add(time.Hour).Format(time.RFC3339)
}

func (f *wardsFixture) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n int
	if err := f.pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A read's answer is held until its access event is committed: when the answer arrives, the
// event is already in the outbox; when the event cannot be recorded (the database refuses it),
// the data never leaves: 503 unavailable, and none of the handler's answer is sent.
//
// Both ways: the answer held while the commit runs, and (every connection of the server's pool
// in use) the commit first, then the handler.
// Verifies: REQ-ACC-040
func TestReadAnswerHeldUntilAudited(t *testing.T) {
	t.Parallel()
	t.Run("held", func(t *testing.T) {
		t.Parallel()
		testReadAudited(t, newWardsFixture(t, 1, nil))
	})
	t.Run("pool busy", func(t *testing.T) {
		t.Parallel()
		f := newWardsFixture(t, 1, func(c *Config) {
			// The server's pool (what poolBusy looks at): one connection, held by the test.
			pc := c.Pool.Config()
			pc.MaxConns = 1
			busy, err := pgxpool.NewWithConfig(context.Background(), pc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(busy.Close)
			conn, err := busy.Acquire(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(conn.Release)
			c.Pool = busy
		})
		if !f.s.poolBusy() {
			t.Fatal("poolBusy() = false with the pool's only connection acquired")
		}
		testReadAudited(t, f)
	})
}

func testReadAudited(t *testing.T, f *wardsFixture) {
	ctx := context.Background()
	p := f.onA[0]

	resp, err := f.clinA.Get(f.observationsURL(p.ID))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"value"`) {
		t.Fatalf("GET observations = %d %s, want 200 with the observations", resp.StatusCode, body)
	}
	// Read at once, no waiting: the event committed before the answer was released.
	if n := f.count(t, `SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'access.phi.read'
		AND object_id = $2 AND actor_id = $3`, resp.Header.Get("X-Request-Id"), p.ID.String(), f.clinAUser.ID.String()); n != 1 {
		t.Fatalf("access.phi.read events of the answered read = %d, want 1 (committed before the answer)", n)
	}

	// The database refuses access events from now on: a real failure of the commit.
	if _, err := f.pool.Exec(ctx, `CREATE FUNCTION refuse_reads() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.action = 'access.phi.read' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_reads();`); err != nil {
		t.Fatal(err)
	}
	resp, err = f.clinA.Get(f.observationsURL(p.ID))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var e errorBody
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != http.StatusServiceUnavailable || e.Error.Code != CodeUnavailable {
		t.Fatalf("GET observations, audit refused = %d %s, want 503 %s", resp.StatusCode, body, CodeUnavailable)
	}
	if strings.Contains(string(body), `"observations"`) || strings.Contains(string(body), `"value"`) {
		t.Fatalf("GET observations, audit refused: the held answer leaked: %s", body)
	}
	if n := f.count(t, `SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'access.phi.read'`,
		resp.Header.Get("X-Request-Id")); n != 0 {
		t.Fatalf("access.phi.read events of the refused read = %d, want 0", n)
	}
}

// A ward-A clinician's lists never hold a ward-B patient but the one on their care team: the
// patient list, and the patients a stream without patient_id is subscribed to.
// Verifies: REQ-ACC-025
func TestListsOfWardClinicianStayOnTheirWard(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 5, nil)
	ctx := context.Background()
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "test", AuthMethod: "internal"}, RequestID: "test"}
	mine := f.onB[2]
	if _, err := f.core.AddCareTeamMember(ctx, by, mine.ID, f.clinAUser.ID.String(), "nurse"); err != nil {
		t.Fatal(err)
	}
	want := map[uuid.UUID]bool{mine.ID: true}
	for _, p := range f.onA {
		want[p.ID] = true
	}
	check := func(what string, got []uuid.UUID) {
		t.Helper()
		seen := map[uuid.UUID]bool{}
		for _, id := range got {
			if !want[id] {
				t.Errorf("%s holds patient %s of another ward", what, id)
			}
			seen[id] = true
		}
		if len(seen) != len(want) {
			t.Errorf("%s: %d patients, want %d (ward A's and the care-team patient)", what, len(seen), len(want))
		}
	}

	resp, err := f.clinA.Get(f.ts.URL + "/api/v1/patients?limit=1000")
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Patients []core.Patient }
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /patients = %d, %v", resp.StatusCode, err)
	}
	var ids []uuid.UUID
	for _, p := range list.Patients {
		ids = append(ids, p.ID)
	}
	check("GET /patients", ids)

	// A stream without patient_id: subscribed to the visible patients (its audit event).
	sctx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, f.ts.URL+"/api/v1/stream", nil)
	resp, err = f.clinA.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /stream = %d", resp.StatusCode)
	}
	reqID := resp.Header.Get("X-Request-Id")
	cancel()
	resp.Body.Close()
	var payload struct{ Patients []uuid.UUID }
	var raw []byte
	if err := f.pool.QueryRow(ctx, `SELECT payload FROM audit_events WHERE request_id = $1 AND action = 'access.stream.subscribed'`,
		reqID).Scan(&raw); err != nil {
		t.Fatalf("the stream's access.stream.subscribed event: %v", err)
	}
	if err := json.Unmarshal(raw, &payload); err != nil {
		t.Fatal(err)
	}
	check("the stream's subscription", payload.Patients)
}

// A handler that fails after writing part of a held answer: the client gets the server's 500
// error envelope, not an empty or partial answer.
// Verifies: REQ-ACC-040
func TestHeldAnswerOfPanickingHandler(t *testing.T) {
	t.Parallel()
	f := newWardsFixture(t, 1, nil)
	const path = "/api/v1/test/patients/:id/panic"
	f.s.echo.GET(path, func(c echo.Context) error {
		c.Response().Header().Set("X-Partial", "1")
		c.Response().WriteHeader(http.StatusOK)
		_, _ = c.Response().Write([]byte(`{"observations":[`))
		panic("handler failed half way")
	})
	f.s.permit(http.MethodGet, path, allow(auth.ObjObservation, "read").on(targetPatient).reads("test"))
	resp, err := f.clinA.Get(f.ts.URL + "/api/v1/test/patients/" + f.onA[0].ID.String() + "/panic")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e errorBody
	if resp.StatusCode != http.StatusInternalServerError || json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		t.Fatalf("GET (handler panics) = %d %q, want 500 with the error envelope", resp.StatusCode, body)
	}
	if strings.Contains(string(body), "observations") || resp.Header.Get("X-Partial") != "" {
		t.Fatalf("GET (handler panics): the partial answer leaked: %q %v", body, resp.Header)
	}
}
