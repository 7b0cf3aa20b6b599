package server

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	m "github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/interop/fhir"
	"github.com/vigilhealth/vigil/interop/fhir/api"
	"github.com/vigilhealth/vigil/interop/fhir/subscription"
)

// FHIR Subscriptions at /fhir/R4/Subscription (docs/interop.md#subscriptions): create, read,
// search and delete, for administrators (policy: subscription manage) and for API tokens
// with SMART scopes covering the topic's resource type (integration service accounts). The
// API is interop/fhir/subscription; this file authorizes, gives it the owner's policy
// (subscriptionPolicy, evaluated again at every event) and writes the answers.

// HeaderWebhookSecret carries a new Subscription's signing secret (base64), once, in the
// answer to its creation.
const HeaderWebhookSecret = "Vigil-Webhook-Secret"

// FHIRSubscriptions returns the Subscriptions service (nil without Core and Auth), whose Run
// the command starts on every replica.
func (s *Server) FHIRSubscriptions() *subscription.Service { return s.fhirSubs }

func (s *Server) mountFHIRSubscriptions(g *echo.Group, svc *api.Service) {
	if s.cfg.Core == nil || s.cfg.Auth == nil {
		return
	}
	var wh subscription.Webhooks = s.cfg.Core
	if s.cfg.SubscriptionWebhooks != nil {
		wh = s.cfg.SubscriptionWebhooks
	}
	subs, err := subscription.New(subscription.Config{Pool: s.cfg.Pool, Hub: s.cfg.Core.Hub(), Webhooks: wh, Resources: svc,
		Policy: subscriptionPolicy{s: s, api: svc}, Recorder: s.cfg.Recorder, Logger: s.log, Now: s.cfg.Now})
	if err != nil {
		return
	}
	s.fhirSubs = subs
	g.POST("/Subscription", func(c echo.Context) error {
		p := PrincipalOf(c)
		if err := s.mayManageSubscriptions(c, svc, p, "", uuid.Nil); err != nil {
			return err
		}
		body, err := io.ReadAll(io.LimitReader(c.Request().Body, subscription.MaxBody+1))
		if err != nil {
			return bodyReadError(err)
		}
		req, err := subscription.Parse(body)
		if err != nil {
			return err
		}
		if err := s.mayManageSubscriptions(c, svc, p, req.Topic.Resource, req.Patient); err != nil {
			return err
		}
		base := c.Scheme() + "://" + c.Request().Host + FHIRBase
		sub, secret, err := subs.Create(c.Request().Context(), EventFor(c), ownerOf(p), base, body)
		if err != nil {
			return err
		}
		Audited(c) // fhir.subscription.created
		c.Response().Header().Set("Location", base+"/Subscription/"+sub.ID.String())
		c.Response().Header().Set(HeaderWebhookSecret, base64.StdEncoding.EncodeToString(secret))
		return writeSubscription(c, http.StatusCreated, sub)
	})
	g.GET("/Subscription", func(c echo.Context) error {
		p := PrincipalOf(c)
		if err := s.mayManageSubscriptions(c, svc, p, "", uuid.Nil); err != nil {
			return err
		}
		list, err := subs.List(c.Request().Context(), s.subscriptionSubjectFilter(p))
		if err != nil {
			return err
		}
		base := c.Scheme() + "://" + c.Request().Host + FHIRBase
		n := len(list)
		b := m.Bundle{Type: m.BundleTypeSearchset, Total: &n, Link: []m.BundleLink{{Relation: "self", Url: base + "/Subscription"}}}
		mode := m.SearchEntryModeMatch
		for _, sub := range list {
			raw, err := subscription.Render(sub)
			if err != nil {
				return err
			}
			u := base + "/Subscription/" + sub.ID.String()
			b.Entry = append(b.Entry, m.BundleEntry{FullUrl: &u, Resource: raw, Search: &m.BundleEntrySearch{Mode: &mode}})
		}
		return writeFHIR(c, http.StatusOK, b)
	})
	g.GET("/Subscription/:id", func(c echo.Context) error {
		sub, err := s.subscriptionOf(c, svc, subs)
		if err != nil {
			return err
		}
		return writeSubscription(c, http.StatusOK, sub)
	})
	g.GET("/Subscription/:id/$status", func(c echo.Context) error {
		sub, err := s.subscriptionOf(c, svc, subs)
		if err != nil {
			return err
		}
		raw, err := subscription.RenderStatus(sub, s.cfg.Now())
		if err != nil {
			return err
		}
		return c.Blob(http.StatusOK, FHIRContentType, raw)
	})
	g.DELETE("/Subscription/:id", func(c echo.Context) error {
		sub, err := s.subscriptionOf(c, svc, subs)
		if err != nil {
			return err
		}
		if err := subs.Delete(c.Request().Context(), EventFor(c), sub.ID); err != nil {
			return err
		}
		Audited(c) // fhir.subscription.deleted
		return c.NoContent(http.StatusNoContent)
	})
}

func writeSubscription(c echo.Context, status int, sub subscription.Subscription) error {
	raw, err := subscription.Render(sub)
	if err != nil {
		return err
	}
	return c.Blob(status, FHIRContentType, raw)
}

// subscriptionOf returns the Subscription of the route's id if the caller may manage it
// (not found otherwise, so that another owner's Subscription does not leak).
func (s *Server) subscriptionOf(c echo.Context, svc *api.Service, subs *subscription.Service) (subscription.Subscription, error) {
	p := PrincipalOf(c)
	if err := s.mayManageSubscriptions(c, svc, p, "", uuid.Nil); err != nil {
		return subscription.Subscription{}, err
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return subscription.Subscription{}, api.ErrNotFound
	}
	sub, err := subs.Get(c.Request().Context(), id)
	if errors.Is(err, subscription.ErrNotFound) {
		return sub, errors.Join(api.ErrNotFound, err)
	}
	if err != nil {
		return sub, err
	}
	if f := s.subscriptionSubjectFilter(p); f != "" && sub.Owner.Subject != f {
		return subscription.Subscription{}, api.ErrNotFound
	}
	return sub, nil
}

// mayManageSubscriptions: a principal with subscription manage manages every Subscription; an
// API token with SMART scopes manages its own, of the resource types its scopes cover (typ;
// "" for any) — with patient/ scopes only, for its launch patient only (patient, the
// Subscription's filter). Others: 403 forbidden.
func (s *Server) mayManageSubscriptions(c echo.Context, svc *api.Service, p *auth.Principal, typ string, patient uuid.UUID) error {
	forbidden := &APIError{Status: http.StatusForbidden, Code: CodeForbidden, Message: "not allowed to manage FHIR Subscriptions"}
	if p == nil {
		return forbidden
	}
	if _, err := s.cfg.Auth.Enforcer().Allow(p, "manage", auth.Target{Object: auth.ObjSubscription}); err == nil {
		return nil
	} else if !errors.Is(err, auth.ErrForbidden) {
		return err
	}
	if p.TokenID == uuid.Nil {
		return forbidden
	}
	g, ok, err := svc.ScopesOf(c.Request().Context(), p.TokenID)
	if err != nil {
		return err
	}
	if !ok {
		return forbidden
	}
	if typ != "" {
		allowed, patientOnly := g.Scopes.Allows(typ)
		if !allowed || (patientOnly && patient != g.Patient) {
			return &APIError{Status: http.StatusForbidden, Code: codeInsufficientScope,
				Message: "the token's SMART scopes do not cover " + typ + " of every patient the Subscription covers"}
		}
	}
	return nil
}

// subscriptionSubjectFilter is "" for a manager of every Subscription, else the caller's own
// policy subject.
func (s *Server) subscriptionSubjectFilter(p *auth.Principal) string {
	if _, err := s.cfg.Auth.Enforcer().Allow(p, "manage", auth.Target{Object: auth.ObjSubscription}); err == nil {
		return ""
	}
	return p.Subject
}

func ownerOf(p *auth.Principal) subscription.Owner {
	return subscription.Owner{Kind: p.Kind, ID: p.ID, Subject: p.Subject, TokenID: p.TokenID}
}

// subscriptionPolicy answers for a Subscription's owner, at the moment of the call: the owner
// must still be active (a user not disabled; a token neither revoked nor expired, and its
// SMART scopes covering the type and patient), and the policy must let its subject read the
// type's data of the patient — on the patient's ward or care team, never under a
// break-glass grant.
type subscriptionPolicy struct {
	s   *Server
	api *api.Service
}

func (sp subscriptionPolicy) active(ctx context.Context, o subscription.Owner, typ string, patient uuid.UUID) (bool, error) {
	a := sp.s.cfg.Auth
	switch {
	case o.TokenID != uuid.Nil:
		toks, err := a.APITokens(ctx, o.ID)
		if err != nil {
			return false, err
		}
		var live bool
		for _, t := range toks {
			if t.ID == o.TokenID {
				live = t.RevokedAt == nil && sp.s.cfg.Now().Before(t.ExpiresAt)
			}
		}
		if !live {
			return false, nil
		}
		g, ok, err := sp.api.ScopesOf(ctx, o.TokenID)
		if err != nil {
			return false, err
		}
		if ok {
			allowed, patientOnly := g.Scopes.Allows(typ)
			if !allowed || (patientOnly && (patient == uuid.Nil || patient != g.Patient)) {
				return false, nil
			}
		}
		return true, nil
	case o.Kind == audit.ActorUser:
		u, err := a.User(ctx, o.ID)
		if errors.Is(err, auth.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return u.Status == auth.StatusActive, nil
	}
	return false, nil
}

func (sp subscriptionPolicy) MayRead(ctx context.Context, o subscription.Owner, typ string, patient uuid.UUID) (bool, error) {
	obj := api.Types[typ]
	if obj == "" || patient == uuid.Nil {
		return false, nil
	}
	if ok, err := sp.active(ctx, o, typ, patient); err != nil || !ok {
		return false, err
	}
	t := auth.Target{Object: obj}
	if err := sp.s.patientTarget(ctx, patient, &t); err != nil {
		return false, err
	}
	clin := ""
	if o.Kind == audit.ActorUser {
		clin = o.ID.String()
	}
	d, err := sp.s.cfg.Auth.Enforcer().Decide(o.Subject, clin, "read", t)
	if err != nil {
		return false, err
	}
	return d.Allowed && d.BreakGlass == uuid.Nil, nil
}

func (sp subscriptionPolicy) MayReadAll(ctx context.Context, o subscription.Owner, typ string) (bool, error) {
	obj := api.Types[typ]
	if obj == "" {
		return false, nil
	}
	if ok, err := sp.active(ctx, o, typ, uuid.Nil); err != nil || !ok {
		return false, err
	}
	// Every patient: the patients the owner may read are all of them (a role held for every
	// ward), not some wards, care teams or break-glass grants. Each event is decided again
	// for its patient (MayRead).
	vis, err := sp.s.cfg.Auth.Enforcer().Visibility(&auth.Principal{Kind: o.Kind, ID: o.ID, Subject: o.Subject})
	if err != nil {
		return false, err
	}
	return vis.All, nil
}

// subscriptionClassify maps the Subscription API's refusals.
func subscriptionClassify(err error) (int, []fhir.Problem, bool) {
	var se *subscription.Error
	if errors.As(err, &se) {
		return se.Status, []fhir.Problem{se.Problem}, true
	}
	return 0, nil, false
}
