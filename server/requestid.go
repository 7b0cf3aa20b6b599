package server

import (
	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
)

// Request ids. The server names every request itself: its id is in the answer's X-Request-Id
// header, the error envelope, the logs and every audit event of the request. A client's own
// id is never used as the request id (one too long for the audit trail made the audit write
// fail, and a chosen id could pose as another request's); when it is a short, plain token it
// is kept apart, as the request's correlation id: answered in X-Correlation-Id, logged, and
// recorded in the payload of the server's own audit events of the request.

// HeaderCorrelationID is the header a client may send its own correlation id in (the
// X-Request-Id header is read the same way, for clients written against earlier versions).
const HeaderCorrelationID = "X-Correlation-Id"

// MaxCorrelationIDLen is the longest correlation id kept; longer ones are ignored.
const MaxCorrelationIDLen = 128

const (
	requestIDKey     = "vigil.request_id"
	correlationIDKey = "vigil.correlation_id"
)

// requestIDs gives the request its server-made id (a UUIDv7: unique, and ordered by time) and
// keeps the client's correlation id when it is valid.
func (s *Server) requestIDs(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		id := uuid.Must(uuid.NewV7()).String()
		c.Set(requestIDKey, id)
		req, h := c.Request(), c.Response().Header()
		cid := req.Header.Get(HeaderCorrelationID)
		if cid == "" {
			cid = req.Header.Get(echo.HeaderXRequestID)
		}
		if validCorrelationID(cid) {
			c.Set(correlationIDKey, cid)
			h.Set(HeaderCorrelationID, cid)
		}
		// Whatever reads the request header later (echo's own middleware) sees the server's id.
		req.Header.Set(echo.HeaderXRequestID, id)
		h.Set(echo.HeaderXRequestID, id)
		return next(c)
	}
}

// validCorrelationID reports whether v is a correlation id the server keeps: 1 to
// MaxCorrelationIDLen bytes of ASCII letters, digits and - _ . : / + = @ ~ (UUIDs, ULIDs,
// hex, base64 and trace ids fit).
func validCorrelationID(v string) bool {
	if v == "" || len(v) > MaxCorrelationIDLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch b := v[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case b == '-', b == '_', b == '.', b == ':', b == '/', b == '+', b == '=', b == '@', b == '~':
		default:
			return false
		}
	}
	return true
}

// RequestID returns the request's id, made by the server (never the client's header).
func RequestID(c echo.Context) string {
	id, _ := c.Get(requestIDKey).(string)
	return id
}

// CorrelationID returns the client's correlation id of the request, or "" when it sent none
// (or one that was not a valid token).
func CorrelationID(c echo.Context) string {
	id, _ := c.Get(correlationIDKey).(string)
	return id
}

// requestPayload is the payload of the server's own events of a request (rejected, abandoned,
// completed, failed): its status and the client's correlation id, if any. Never the raw path
// or query: they may carry identifiers, and their size is the client's choice.
func requestPayload(c echo.Context, status int) map[string]any {
	p := map[string]any{"status": status}
	if cid := CorrelationID(c); cid != "" {
		p["correlation_id"] = cid
	}
	return p
}
