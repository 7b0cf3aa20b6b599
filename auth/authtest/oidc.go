package authtest

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// OPPassword is the password of every user of the test OpenID provider.
const OPPassword = "op-password"

// OPGroupsScope is the scope a client asks for to receive the "groups" claim.
const OPGroupsScope = storage.CustomScope

// OP is a real OpenID provider in the test's process: zitadel/oidc's OpenID-certified op
// package with its example storage and login form, plus a "groups" claim (scope
// OPGroupsScope). Its users (password OPPassword):
//
//	icu.nurse  Ida Nurse, ida.nurse@hospital.example, groups icu-nurses, staff
//	visitor    Vic Visitor, vic@hospital.example, groups staff
//	q.officer  Quinn Officer, quinn@hospital.example, groups quality
//
// Its clients: "vigil" (secret "vigil-secret") and "other" (secret "other-secret").
type OP struct {
	// Issuer is the provider's URL (its issuer identifier).
	Issuer string
}

// StartOP starts the provider; redirect is the one redirect URL its clients may use (the
// relying party's callback). It stops at the end of the test.
func StartOP(t testing.TB, redirect string) *OP {
	t.Helper()
	var mu sync.Mutex
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hh := h
		mu.Unlock()
		hh.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	users := opUsers{users: map[string]*storage.User{
		"u-icu": {ID: "u-icu", Username: "icu.nurse", Password: OPPassword, FirstName: "Ida", LastName: "Nurse",
			Email: "ida.nurse@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
		"u-none": {ID: "u-none", Username: "visitor", Password: OPPassword, FirstName: "Vic", LastName: "Visitor",
			Email: "vic@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
		"u-q": {ID: "u-q", Username: "q.officer", Password: OPPassword, FirstName: "Quinn", LastName: "Officer",
			Email: "quinn@hospital.example", EmailVerified: true, PreferredLanguage: language.English},
	}}
	clients := map[string]*storage.Client{
		"vigil": storage.WebClient("vigil", "vigil-secret", redirect),
		"other": storage.WebClient("other", "other-secret", redirect),
	}
	st := &opStorage{Storage: storage.NewStorageWithClients(users, clients),
		groups: map[string][]string{"u-icu": {"icu-nurses", "staff"}, "u-none": {"staff"}, "u-q": {"quality"}}}
	router := exampleop.SetupServer(srv.URL, st, nil, false)
	mu.Lock()
	h = router
	mu.Unlock()
	return &OP{Issuer: srv.URL}
}

// Browser returns a client with its own cookie jar, as a browser: it follows redirects
// except the one to a URL that starts with stopAt (the relying party's callback), which it
// answers as is. rt may be nil (http.DefaultTransport).
func Browser(stopAt string, rt http.RoundTripper) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Transport: rt, Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), stopAt) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

// SignIn drives the provider's login form as browser c (see Browser, stopping at redirect)
// does: GET start (an authorization URL, or a relying party's route that redirects to one)
// must lead to the provider's login form; the form is sent for username; the provider must
// answer with a redirect to redirect, whose URL SignIn returns.
func (p *OP) SignIn(t testing.TB, c *http.Client, start, username, redirect string) *url.URL {
	t.Helper()
	resp, err := c.Get(start)
	if err != nil {
		t.Fatalf("GET %s: %v", start, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || id == "" || !strings.HasPrefix(resp.Request.URL.String(), p.Issuer) {
		t.Fatalf("GET %s led to %s (%d), want the provider's login form", start, resp.Request.URL, resp.StatusCode)
	}
	login := *resp.Request.URL
	login.RawQuery = ""
	resp, err = c.PostForm(login.String(), url.Values{"username": {username}, "password": {OPPassword}, "id": {id}})
	if err != nil {
		t.Fatalf("POST login form: %v", err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || !strings.HasPrefix(loc.String(), redirect) {
		t.Fatalf("login form answered %d %v, want a redirect to %s", resp.StatusCode, loc, redirect)
	}
	return loc
}

type opUsers struct{ users map[string]*storage.User }

func (u opUsers) GetUserByID(id string) *storage.User { return u.users[id] }
func (u opUsers) GetUserByUsername(name string) *storage.User {
	for _, x := range u.users {
		if x.Username == name {
			return x
		}
	}
	return nil
}
func (u opUsers) ExampleClientID() string { return "service" }

type opStorage struct {
	*storage.Storage
	groups map[string][]string
}

// SetUserinfoFromRequest adds the groups claim to ID tokens when the client asks for the
// provider's custom scope (the example client allows only that one besides the standard ones).
func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, req, scopes); err != nil {
		return err
	}
	if slices.Contains(scopes, storage.CustomScope) {
		ui.AppendClaims("groups", s.groups[req.GetSubject()])
	}
	return nil
}
