package server

import (
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
)

const actorKey = "vigil.actor"

// anonymous is the actor of a request nobody has authenticated (yet).
var anonymous = audit.Actor{Kind: audit.ActorUser, ID: "anonymous", AuthMethod: "none"}

// SetActor records who is making the request, once authentication (a session, a device
// signature) has established it.
func SetActor(c echo.Context, a audit.Actor) { c.Set(actorKey, a) }

// ActorOf returns the request's actor, or the anonymous user when none is set.
func ActorOf(c echo.Context) audit.Actor {
	if a, ok := c.Get(actorKey).(audit.Actor); ok {
		return a
	}
	return anonymous
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
