package portal

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/internal/auditmark"
)

// Config configures the portal. Zero values take the documented defaults.
type Config struct {
	// Auth signs people in and decides what they may see. Required: without it nobody can
	// sign in, and the portal is not mounted.
	Auth *auth.Service
	// Core is the clinical core: patients, wards, latest observations. Required.
	Core *core.Service
	// Recorder records the portal's reads of patient data (access.phi.read). Required.
	Recorder audit.Recorder
	// Alarms gives the tiles their active alarms. Optional: without it tiles show none.
	Alarms *alarms.Service
	// Rules gives the tiles their latest NEWS2 score. Optional.
	Rules *rules.Engine
	// Devices gives the tiles their device status. Optional.
	Devices *devices.Service
	// Audit is the audit chain the audit browser reads (events, proofs, packs). Optional:
	// without it the audit pages answer 503.
	Audit *chain.Service
	// OIDCName, when set, shows "Sign in with <OIDCName>" on the sign-in page, a link to the
	// server's OpenID Connect login (GET /api/v1/auth/oidc/login). Empty: no button.
	OIDCName string
	// StreamURL is the live notification stream (SSE) the ward overview listens to.
	// Default "/api/v1/stream" (the server's stream).
	StreamURL string
	// NoDataAfter is how old a patient's newest observation may be for its device to count as
	// online; past it the device shows "no data". Default 2 minutes.
	NoDataAfter time.Duration
	// VitalsWindow is how far back the tiles look for each vital. Default 24 hours.
	VitalsWindow time.Duration
	// TileConcurrency is no longer used: the tiles of a page are read in one batch of
	// queries (core.LatestOf, alarms.OpenAlarmsOf, rules.LatestNEWS2Of). Kept for callers.
	TileConcurrency int
	// Now is the clock (ages of values). Default time.Now.
	Now func() time.Time
	// Logger receives render failures. Default slog.Default().
	Logger *slog.Logger
}

// Portal is the mounted web portal.
type Portal struct {
	cfg    Config
	assets *Assets
	pages  map[string]*template.Template
	log    *slog.Logger
}

// New checks the configuration, loads the embedded assets and parses the templates.
func New(cfg Config) (*Portal, error) {
	if cfg.Auth == nil || cfg.Core == nil || cfg.Recorder == nil {
		return nil, errors.New("portal: Config.Auth, Config.Core and Config.Recorder are required")
	}
	if cfg.StreamURL == "" {
		cfg.StreamURL = "/api/v1/stream"
	}
	if cfg.NoDataAfter <= 0 {
		cfg.NoDataAfter = 2 * time.Minute
	}
	if cfg.VitalsWindow <= 0 {
		cfg.VitalsWindow = 24 * time.Hour
	}
	if cfg.TileConcurrency <= 0 {
		cfg.TileConcurrency = 4
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a, err := loadAssets()
	if err != nil {
		return nil, err
	}
	p := &Portal{cfg: cfg, assets: a, log: cfg.Logger}
	if p.pages, err = parseTemplates(a); err != nil {
		return nil, err
	}
	return p, nil
}

// Assets returns the embedded assets (their hashed URLs and integrity values).
func (p *Portal) Assets() *Assets { return p.assets }

// Routes lists the portal's routes as "METHOD /path", for the server's access table: the
// portal authenticates and authorizes its own pages (a page without a session redirects to
// the sign-in page rather than answering 401).
func Routes() []string {
	return []string{"GET /", "GET /signin", "POST /signin", "POST /signout", "GET /ward/tiles/:id", "GET " + AssetPrefix + "*",
		// Audit browser (audit.go), devices (devices.go), administration (admin.go).
		"GET /audit", "GET /audit/events/:id", "GET /audit/events/:id/proof", "GET /audit/patients/:ref", "GET /audit/export",
		"GET /devices", "POST /devices", "GET /devices/:id", "POST /devices/:id/status", "POST /devices/:id/enrollment-token",
		"GET /admin", "POST /admin/break-glass/:id/review", "POST /admin/users", "POST /admin/users/:id/status",
		"POST /admin/roles", "POST /admin/roles/revoke", "POST /admin/mfa-reset", "POST /admin/policy/rules", "POST /admin/policy/rules/remove",
		"POST /admin/wards/:id/news2", "POST /admin/care-teams/:id", "POST /admin/care-teams/:id/remove",
		"GET " + auth.EnrollmentPath, "POST /enroll/start", "POST /enroll/complete",
		// Clinicians' pages (alarms.go, patient.go).
		"GET /alarms", "POST /alarms/:id/acknowledge", "POST /alarms/:id/silence", "POST /alarms/:id/resolve",
		"POST /alarms/acknowledge-patient", "GET /patients/:id", "GET /patients/:id/series", "POST /patients/:id/break-glass",
	}
}

// Mount registers the portal's routes on e.
func (p *Portal) Mount(e *echo.Echo) {
	e.GET(AssetPrefix+"*", p.assets.serve)
	e.GET("/signin", p.page(p.signInPage))
	e.POST("/signin", p.page(p.signIn))
	e.POST("/signout", p.page(p.signOut))
	e.GET("/", p.page(p.wardOverview))
	e.GET("/ward/tiles/:id", p.page(p.wardTile))
	e.GET("/alarms", p.page(p.alarmInbox))
	e.POST("/alarms/:id/acknowledge", p.page(p.alarmAction(alarms.Acknowledged)))
	e.POST("/alarms/:id/silence", p.page(p.alarmAction(alarms.Silenced)))
	e.POST("/alarms/:id/resolve", p.page(p.alarmAction(alarms.Resolved)))
	e.POST("/alarms/acknowledge-patient", p.page(p.bulkAcknowledge))
	e.GET("/patients/:id", p.page(p.patientPage))
	e.GET("/patients/:id/series", p.page(p.patientSeries))
	e.POST("/patients/:id/break-glass", p.page(p.breakGlass))
	e.GET("/audit", p.page(p.auditSearch))
	e.GET("/audit/events/:id", p.page(p.auditEvent))
	e.GET("/audit/events/:id/proof", p.page(p.auditEventProof))
	e.GET("/audit/patients/:ref", p.page(p.auditPatient))
	e.GET("/audit/export", p.page(p.auditExport))
	e.GET("/devices", p.page(p.devicesPage))
	e.POST("/devices", p.page(p.registerDevice))
	e.GET("/devices/:id", p.page(p.devicePage))
	e.POST("/devices/:id/status", p.page(p.deviceStatus))
	e.POST("/devices/:id/enrollment-token", p.page(p.deviceToken))
	e.GET("/admin", p.page(p.adminPage))
	e.POST("/admin/break-glass/:id/review", p.page(p.reviewBreakGlass))
	e.POST("/admin/users", p.page(p.addUser))
	e.POST("/admin/users/:id/status", p.page(p.userStatus))
	e.POST("/admin/roles", p.page(p.adminForm(auth.ObjPolicy, "manage", p.grantRole)))
	e.POST("/admin/roles/revoke", p.page(p.adminForm(auth.ObjPolicy, "manage", p.revokeRole)))
	e.POST("/admin/mfa-reset", p.page(p.adminForm(auth.ObjUser, "manage", p.resetMFA)))
	e.POST("/admin/policy/rules", p.page(p.adminForm(auth.ObjPolicy, "manage", p.addPolicyLine)))
	e.POST("/admin/policy/rules/remove", p.page(p.adminForm(auth.ObjPolicy, "manage", p.removePolicyLine)))
	e.POST("/admin/wards/:id/news2", p.page(p.setWardNEWS2))
	e.POST("/admin/care-teams/:id", p.page(p.addCareTeamMember))
	e.POST("/admin/care-teams/:id/remove", p.page(p.removeCareTeamMember))
	e.GET(auth.EnrollmentPath, p.page(p.enrollPage))
	e.POST("/enroll/start", p.page(p.enrollStart))
	e.POST("/enroll/complete", p.page(p.enrollComplete))
}

// contentSecurityPolicy allows the page's own origin and nothing else: scripts and styles
// only from the portal's hashed asset files (no inline script or style attribute), the live
// stream and htmx requests to the same origin, no frames, no plugins, forms posting home.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// page wraps a page handler: security headers of an HTML answer.
func (p *Portal) page(h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		hd := c.Response().Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
		hd.Set(echo.HeaderCacheControl, "no-store") // pages carry PHI
		return h(c)
	}
}

// audited marks the request audited by the portal itself (internal/auditmark): the event the
// portal or its domain service has just committed — the change in its own transaction, or
// the refusal — is the request's one record, and the server's state-change middleware adds
// no generic event (and sends the page as it is written). Call it only once that event is
// committed.
func audited(c echo.Context) { auditmark.Set(c.Request().Context()) }

// requestID is the server's id of the request (it sets X-Request-ID on every answer first).
func requestID(c echo.Context) string { return c.Response().Header().Get(echo.HeaderXRequestID) }

// viewer authenticates the request's session; nil (and no error) when there is none or it is
// no longer valid: the caller redirects to the sign-in page. Refusals are audited by auth.
func (p *Portal) viewer(c echo.Context) (*auth.Principal, auth.Credentials, error) {
	creds := p.cfg.Auth.CredentialsFrom(c.Request(), c.RealIP(), requestID(c))
	creds.BearerToken = "" // the portal is for people: a session, never an API token
	if creds.SessionToken == "" {
		return nil, creds, nil
	}
	pr, err := p.cfg.Auth.Authenticate(c.Request().Context(), creds)
	if err != nil {
		if auth.CodeOf(err) != "" { // refused (and audited by auth): sign in again
			return nil, creds, nil
		}
		return nil, creds, err
	}
	return pr, creds, nil
}

// toSignIn sends the browser to the sign-in page; an htmx request is told with HX-Redirect so
// that the whole page goes, not a fragment.
func toSignIn(c echo.Context) error {
	if c.Request().Header.Get("HX-Request") == "true" {
		c.Response().Header().Set("HX-Redirect", "/signin")
		return c.NoContent(http.StatusUnauthorized)
	}
	return c.Redirect(http.StatusSeeOther, "/signin")
}

// render executes a page template into the answer.
func (p *Portal) render(c echo.Context, status int, name string, data any) error {
	t, ok := p.pages[name]
	if !ok {
		return fmt.Errorf("portal: no page %q", name)
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, name, data); err != nil {
		p.log.ErrorContext(c.Request().Context(), "portal render failed", slog.String("page", name), slog.String("error", err.Error()))
		return fmt.Errorf("portal: render %s: %w", name, err)
	}
	return c.HTMLBlob(status, []byte(b.String()))
}

// phiRead is one read of a patient's data shown by a page.
type phiRead struct {
	patient, what string
	decision      auth.Decision
}

// auditReads records each read of a patient's data through the portal as access.phi.read
// (as the API does), naming the viewer, the patient, the view and the policy basis. The
// events are recorded concurrently, so the recorder group-commits them (one transaction for
// a page of tiles); it returns once all are committed, or with the first error.
func (p *Portal) auditReads(ctx context.Context, c echo.Context, pr *auth.Principal, reads []phiRead) error {
	if len(reads) == 0 {
		return nil
	}
	now, rid, src := p.cfg.Now(), requestID(c), c.RealIP()
	errs := make(chan error, len(reads))
	for _, r := range reads {
		go func() {
			ev := audit.Event{Time: now, Actor: pr.Actor(), Action: "access.phi.read", RequestID: rid, SourceAddr: src,
				Object: audit.Object{Type: "patient", ID: r.patient}, Outcome: audit.OutcomeSuccess,
				Payload: map[string]any{"what": r.what, "basis": r.decision.Basis, "via": "portal"}}
			_, err := p.cfg.Recorder.RecordNow(ctx, ev)
			errs <- err
		}()
	}
	var first error
	for range reads {
		if err := <-errs; err != nil && first == nil {
			first = fmt.Errorf("portal: audit read: %w", err)
		}
	}
	return first
}
