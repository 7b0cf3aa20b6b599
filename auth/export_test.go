package auth

import (
	"context"
	"slices"

	"github.com/google/uuid"
)

// VerifyIDToken exposes the ID-token check to tests that present tokens obtained from another
// (real) provider or client, as an attacker would.
func (rp *RelyingParty) VerifyIDToken(ctx context.Context, raw, nonce string) string {
	_, reason := rp.verify(ctx, raw, nonce)
	return reason
}

// DecideByCasbin answers like Decide but asks Casbin every time (no memo): the reference the
// memo's answers are compared with.
func (e *Enforcer) DecideByCasbin(subject, clinicianID, action string, t Target) (allowed bool, rule []string, err error) {
	s := e.cur.Load()
	ward := ""
	if t.Ward != uuid.Nil {
		ward = string(WardDomain(t.Ward))
	}
	careTeam := t.Patient != uuid.Nil && clinicianID != "" && slices.Contains(t.CareTeam, clinicianID)
	ce := s.enforcer(t.Object, action)
	ok, expl, err := ce.EnforceEx(subject, ward, t.Object, action, careTeam, false)
	if err != nil || ok || t.Patient == uuid.Nil {
		return ok, expl, err
	}
	if _, has := s.activeGrant(subject, t.Patient, e.now()); has {
		return ce.EnforceEx(subject, ward, t.Object, action, careTeam, true)
	}
	return ok, expl, err
}
