package server

import (
	"errors"
	"net/http"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/interop/fhir"
	"github.com/vigilhealth/vigil/interop/fhir/api"
)

// SMART on FHIR scopes of API tokens (docs/interop.md#smart-on-fhir-scopes): an
// administrator gives a service account's token scopes ("patient/*.read",
// "user/Observation.read"); the token then reads through /fhir/R4 only the types they name —
// and, with patient/ scopes, only the launch patient — always within what its roles allow.

// codeInsufficientScope refuses a FHIR request its token's scopes do not cover (403).
const codeInsufficientScope = "insufficient_scope"

func (s *Server) mountSMART(svc *api.Service) {
	s.echo.PUT("/api/v1/api-tokens/:id/smart-scopes", func(c echo.Context) error {
		id, err := uuid.Parse(c.Param("id"))
		if err != nil {
			return BadRequest("invalid_token_id", "token id must be a UUID")
		}
		var body struct {
			Scope     string    `json:"scope"`
			PatientID uuid.UUID `json:"patient_id"`
		}
		if err := c.Bind(&body); err != nil {
			return BadRequest(CodeBadRequest, "body must be {\"scope\": \"…\", \"patient_id\": …}")
		}
		g, err := svc.SetScopes(c.Request().Context(), EventFor(c), id, body.Scope, body.PatientID)
		switch {
		case errors.Is(err, fhir.ErrInvalidScope):
			return BadRequest("invalid_scope", err.Error())
		case errors.Is(err, api.ErrUnknownToken):
			return &APIError{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no such API token"}
		case err != nil:
			return err
		}
		Audited(c) // fhir.smart_scopes.set
		return c.JSON(http.StatusOK, g)
	})
}

// smartScope narrows fc by the scopes of its token for a request on typ: an error when the
// scopes do not cover typ, the launch patient when they cover it in a patient context only.
func (s *Server) smartScope(c echo.Context, svc *api.Service, fc *fhirCaller, typ string) error {
	if fc.p == nil || fc.p.TokenID == uuid.Nil {
		return nil
	}
	g, ok, err := svc.ScopesOf(c.Request().Context(), fc.p.TokenID)
	if err != nil || !ok {
		return err
	}
	allowed, patientOnly := g.Scopes.Allows(typ)
	if !allowed || (patientOnly && (typ == "Device" || typ == "AuditEvent")) {
		return &APIError{Status: http.StatusForbidden, Code: codeInsufficientScope,
			Message: "the token's SMART scopes do not cover " + typ}
	}
	if patientOnly {
		fc.only = g.Patient
	}
	return nil
}
