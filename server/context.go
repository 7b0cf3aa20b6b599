package server

import (
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
)

const actorKey = "vigil.actor"

// SetActor records who is making the request, once authentication (a session, a device
// signature) has established it.
func SetActor(c echo.Context, a audit.Actor) { c.Set(actorKey, a) }

// ActorOf returns the request's actor, or audit.Unauthenticated when nobody has been
// authenticated (the access middleware sets every other request's principal).
func ActorOf(c echo.Context) audit.Actor {
	if a, ok := c.Get(actorKey).(audit.Actor); ok {
		return a
	}
	return audit.Unauthenticated
}

// EventFor returns an audit event pre-filled with the request's actor, request id and source
// address; the handler or domain code completes action, object and outcome.
func EventFor(c echo.Context) audit.Event {
	return audit.Event{
		Actor:      ActorOf(c),
		RequestID:  RequestID(c),
		SourceAddr: c.RealIP(),
	}
}
