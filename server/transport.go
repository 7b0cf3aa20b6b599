package server

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// DefaultReadTimeout is the default of Config.ReadTimeout.
const DefaultReadTimeout = 30 * time.Second

// securityHeaders marks every answer as not to be stored by caches (API answers carry PHI:
// patients, observations, alarms, audit payloads) and not to be content-sniffed by browsers.
func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set(echo.HeaderCacheControl, "no-store")
		h.Set(echo.HeaderXContentTypeOptions, "nosniff")
		return next(c)
	}
}

// readDeadline bounds the time a request's body may take to arrive: the connection's read
// deadline is set to ReadTimeout from now for a request with a body (net/http lifts it once
// the body has been read to its end, when it starts watching the connection for the client
// going away, so a request that is merely slow to answer is not cut off). Requests without a
// body get none: their headers were bounded by ReadHeaderTimeout. A body that does not arrive
// in time fails its read: 408 request_timeout. Being a middleware, it holds for any
// http.Server the handler runs in, not only Serve's.
func (s *Server) readDeadline(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
			// Fails only without a real connection underneath (a test recorder).
			_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		}
		return next(c)
	}
}
