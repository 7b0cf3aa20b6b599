package server

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// routes mounts every endpoint. Each area mounts its own routes from its own file
// (server/<area>.go) with one line here.
func (s *Server) routes() {
	s.echo.GET("/healthz", s.healthz)
	s.echo.GET("/readyz", s.readyz)
	s.echo.HEAD("/healthz", s.healthz)
	s.echo.HEAD("/readyz", s.readyz)
	api := s.echo.Group("/api/v1")
	_ = api // areas mount here: s.mountAudit(api), s.mountDevices(api), …
	s.mountDevices(api)
	s.mountAlarms(api)
	s.mountAudit(api)
	s.mountCore(api)
	s.mountAuth(api)
	s.mountFHIR() // /fhir/R4 (fhir.go)
	if s.cfg.Portal != nil {
		s.cfg.Portal.Mount(s.echo)
	}
}

// healthz answers 200 while the process is up; it checks nothing else.
func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"status": "ok", "version": s.cfg.Version})
}

type checkResult struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Detail any    `json:"detail,omitempty"`
}

// readyz answers 200 when the database is reachable, the schema is within the binary's
// compatibility window, and every extra readiness check passes; otherwise 503 with the
// failing checks named, or 503 "draining" once the server is shutting down (shutdown.go).
func (s *Server) readyz(c echo.Context) error {
	if s.Draining() {
		if c.Request().Method == http.MethodHead {
			return c.NoContent(http.StatusServiceUnavailable)
		}
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "draining"})
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	checks := []ReadinessCheck{
		{Name: "database", Check: func(ctx context.Context) (any, error) { return nil, s.cfg.Pool.Ping(ctx) }},
		{Name: "schema", Check: s.checkSchema},
	}
	checks = append(checks, s.cfg.ReadinessChecks...)
	results := make(map[string]checkResult, len(checks))
	ready := true
	for _, ch := range checks {
		detail, err := ch.Check(ctx)
		r := checkResult{OK: err == nil, Detail: detail}
		if err != nil {
			r.Error = err.Error()
			ready = false
		}
		results[ch.Name] = r
	}
	status, word := http.StatusOK, "ready"
	if !ready {
		status, word = http.StatusServiceUnavailable, "not_ready"
	}
	if c.Request().Method == http.MethodHead {
		return c.NoContent(status)
	}
	return c.JSON(status, map[string]any{"status": word, "checks": results})
}
