package server

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/keys/keystest"
)

var principalSeq atomic.Int64

// SignedIn gives a test server its identity service and the test a signed-in user: a new
// auth service on pool (for Config.Auth) and an HTTP client whose requests carry a real
// session (cookie and CSRF token) of a user holding grants (every role everywhere when none
// are given). The user's audit actor is the user's id.
func SignedIn(t testing.TB, pool *pgxpool.Pool, rec audit.Recorder, grants ...authtest.Grant) (*auth.Service, *http.Client) {
	t.Helper()
	svc, cl, _ := SignedInUserOn(t, pool, rec, grants...)
	return svc, cl
}

// SignedInUserOn is SignedIn that also returns the user.
func SignedInUserOn(t testing.TB, pool *pgxpool.Pool, rec audit.Recorder, grants ...authtest.Grant) (*auth.Service, *http.Client, *authtest.User) {
	t.Helper()
	svc := authtest.New(t, pool, rec, keystest.LocalRing(t, nil).PHI(), nil, nil)
	cl, u := SignedInUser(t, svc, grants...)
	return svc, cl, u
}

// SignedInClient signs a new user holding grants (every role everywhere when none) in to svc and
// returns a client carrying the session.
func SignedInClient(t testing.TB, svc *auth.Service, grants ...authtest.Grant) *http.Client {
	t.Helper()
	c, _ := SignedInUser(t, svc, grants...)
	return c
}

// SignedInUser is SignedInClient that also returns the user.
func SignedInUser(t testing.TB, svc *auth.Service, grants ...authtest.Grant) (*http.Client, *authtest.User) {
	t.Helper()
	if len(grants) == 0 {
		grants = authtest.Everywhere
	}
	u := authtest.Enroll(t, svc, "user"+strconv.FormatInt(principalSeq.Add(1), 10)+"@test.example", grants...)
	return authtest.Client(svc, authtest.SignIn(t, svc, u)), u
}

// Permit declares the access of a route a test adds after New (public: no authentication).
func (s *Server) Permit(method, path string) { s.permit(method, path, public()) }
