package portal

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/rules"
)

// The administration forms beyond adding, disabling and enabling users (issue #15): reset a
// user's second factor, grant and revoke roles (ward memberships), add and remove policy
// lines, set a ward's NEWS2 settings, and change care teams. Each form needs the permission
// of its action (user manage; policy manage; rule write on the ward; care_team manage on the
// patient), the session's CSRF token, and passes server-side validation — a refusal shows
// its code next to the field, stores nothing and is audited as a rejection of the action.
// The changes go through the domain services, which audit them: auth (user.mfa_reset,
// policy.role_granted, policy.role_revoked, policy.rule_added, policy.rule_removed), the
// rules engine (rules.ward_news2_set) and core (care_team.member_added, …_removed). A form
// posted from a page that is out of date — the grant already revoked, the line already
// removed, the ward's settings changed meanwhile, the member already off the team — answers
// 409 with who changed it and when, and changes nothing.

// userOption is a user in a form's list.
type userOption struct {
	ID, Name string
}

// roleGrantView is one role grant (a ward membership when on a ward), with its revoke form.
type roleGrantView struct {
	Key                    string // subject|role|domain: which row a refusal belongs to
	Subject, Who           string
	Role, Domain, Where    string
	Source                 string
	MayRevoke, IsViewerOwn bool
}

type grantForm struct{ User, Role, Ward string }
type mfaForm struct{ User, Reason string }
type policyLineForm struct{ Role, Object, Action, Scope string }

// wardNEWS2Form is one ward's NEWS2 settings form, filled with the current settings.
type wardNEWS2Form struct {
	WardID, Ward string
	Charted      map[string]bool
	MaxAge       string
	Since        string // when the settings were last set (RFC 3339), "" if never: the stale-page check
	Reason       string
	Current      string // "temp, acvpu for 4h, set by … at …" or "defaults"
}

// policyObjects are the objects a policy line may name (auth's Obj* constants).
var policyObjects = []string{auth.ObjPatient, auth.ObjObservation, auth.ObjAlarm, auth.ObjCareTeam, auth.ObjRule, auth.ObjStream,
	auth.ObjBreakGlass, auth.ObjDevice, auth.ObjAudit, auth.ObjEvidence, auth.ObjUser, auth.ObjServiceAccount, auth.ObjPolicy,
	auth.ObjSite, auth.ObjWebhook}

var policyScopes = []string{auth.ScopeGlobal, auth.ScopeWard, auth.ScopeAny, auth.ScopeCareTeam, auth.ScopeBreakGlass}

const timeFormat = "2006-01-02 15:04 UTC"

// adminForm is an administration form post's handler: before h runs, the viewer is signed in
// (else the sign-in page), holds the permission of the action (else the 403 page, audited)
// and sent the session's CSRF token (else 403, audited by auth); h gets the viewer and the
// page's data.
func (p *Portal) adminForm(obj, act string, h func(echo.Context, *auth.Principal, adminData) error) echo.HandlerFunc {
	return func(c echo.Context) error {
		pr, creds, done, err := p.guard(c, obj, act)
		if done {
			return err
		}
		if err := p.csrf(c, pr, creds); err != nil {
			return err
		}
		return h(c, pr, adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr), Errors: map[string]*formError{}})
	}
}

// refuse audits a refused form as a rejection of action on obj (its codes as the reason;
// nothing was stored) and renders the page with the errors next to their fields.
func (p *Portal) refuse(c echo.Context, pr *auth.Principal, data adminData, status int, action string, obj audit.Object, detail map[string]any) error {
	codes := make([]string, 0, len(data.Errors))
	for _, e := range data.Errors {
		codes = append(codes, e.Code)
	}
	sort.Strings(codes)
	if detail == nil {
		detail = map[string]any{}
	}
	detail["via"] = "portal"
	ev := audit.Event{Time: p.cfg.Now(), Actor: pr.Actor(), Action: action, RequestID: requestID(c), SourceAddr: c.RealIP(),
		Object: obj, Outcome: audit.OutcomeRejected, Reason: strings.Join(codes, ","), Payload: detail}
	if _, err := p.cfg.Recorder.RecordNow(c.Request().Context(), ev); err != nil {
		return fmt.Errorf("portal: audit refusal of %s: %w", action, err)
	}
	audited(c)
	return p.renderAdmin(c, status, pr, data)
}

// formAction is what an administration form does once its fields are read and checked.
type formAction struct {
	name   string         // for errors: "grant role"
	action string         // the audit action of the change and of its refusal: "policy.role_granted"
	obj    audit.Object   // what it changes
	detail map[string]any // the refusal's payload (what was asked)
	// conflictAudited: the domain records its own refusal of a conflict (the rules engine's
	// stale_settings), so the portal renders it without a second event.
	conflictAudited bool
}

// finishForm ends every administration form the same way: a form with errors next to its
// fields is refused (422, audited as a rejection of the action, nothing stored); otherwise do
// changes the state through the domain service, which audits the change in its transaction,
// and sets the page's notice — or reports a conflict with the stored state (a stale page:
// 409 with the conflict next to its field, audited as a rejection, nothing changed). The
// request is marked audited (internal/auditmark) once its one event is committed, and the
// page is written only after that.
func (p *Portal) finishForm(c echo.Context, pr *auth.Principal, data adminData, a formAction, do func(*adminData) (*formError, error)) error {
	if len(data.Errors) > 0 {
		return p.refuse(c, pr, data, http.StatusUnprocessableEntity, a.action, a.obj, a.detail)
	}
	conflict, err := do(&data)
	if err != nil {
		return fmt.Errorf("portal: %s: %w", a.name, err)
	}
	if conflict != nil {
		data.Errors[conflict.Field] = conflict
		if a.conflictAudited {
			audited(c)
			return p.renderAdmin(c, http.StatusConflict, pr, data)
		}
		return p.refuse(c, pr, data, http.StatusConflict, a.action, a.obj, a.detail)
	}
	audited(c)
	return p.renderAdmin(c, http.StatusOK, pr, data)
}

// stale turns the domain's refusal of a change made stale by another (errors.Is(err, target):
// the grant already held, the line already removed, …) into the form's conflict, described
// by conflict; any other error passes as it is.
func stale(err, target error, conflict func() *formError) (*formError, error) {
	if errors.Is(err, target) {
		return conflict(), nil
	}
	return nil, err
}

// lastPolicyChange names who made the newest policy change of that kind whose detail
// matches, and when (" by Ann Admin at 2026-12-03 06:00 UTC"), or "".
func (p *Portal) lastPolicyChange(ctx context.Context, change string, match func(map[string]any) bool) string {
	hist, err := p.cfg.Auth.PolicyHistory(ctx, 500)
	if err != nil {
		return ""
	}
	names := p.actorNames(ctx)
	for _, h := range hist {
		if h.Change != change || !match(h.Detail) {
			continue
		}
		who := h.Actor
		if id, ok := strings.CutPrefix(h.Actor, "user:"); ok {
			who, _ = names("user", &id)
		}
		return " by " + who + " at " + h.ChangedAt.UTC().Format(timeFormat)
	}
	return ""
}

func detailIs(kv map[string]string) func(map[string]any) bool {
	return func(d map[string]any) bool {
		for k, v := range kv {
			if s, _ := d[k].(string); s != v {
				return false
			}
		}
		return true
	}
}

func ruleDetailIs(r auth.Rule) func(map[string]any) bool {
	return func(d map[string]any) bool {
		m, _ := d["rule"].(map[string]any)
		return m != nil && m["role"] == r.Role && m["object"] == r.Object && m["action"] == r.Action && m["scope"] == r.Scope
	}
}

// checkRoleWard validates a role and where it is granted (shared by adding a user and
// granting a role): the domain, or the field's error.
func (p *Portal) checkRoleWard(ctx context.Context, roleName, ward, prefix string) (auth.Domain, *formError, error) {
	role, ok := auth.LookupRole(roleName)
	domain, derr := auth.ParseDomain(ward)
	switch {
	case !ok:
		return "", &formError{Code: "invalid_role", Field: prefix + "role", Message: "Choose a role."}, nil
	case derr != nil:
		return "", &formError{Code: "invalid_ward", Field: prefix + "ward", Message: "Choose a ward, or everywhere."}, nil
	case role.Clinical && domain == auth.AllDomains:
		return "", &formError{Code: "ward_required", Field: prefix + "ward", Message: "A clinical role is granted on a ward: choose one."}, nil
	case !role.Clinical && domain != auth.AllDomains:
		return "", &formError{Code: "ward_not_allowed", Field: prefix + "ward", Message: "This role is granted everywhere: choose everywhere."}, nil
	}
	if w, isWard := domain.Ward(); isWard {
		names, err := p.wardNames(ctx)
		if err != nil {
			return "", nil, err
		}
		if _, known := names[w]; !known {
			return "", &formError{Code: "invalid_ward", Field: prefix + "ward", Message: "Choose a ward, or everywhere."}, nil
		}
	}
	return domain, nil, nil
}

// where names a domain: "on Ward 7A" or "everywhere".
func where(d auth.Domain, wards map[uuid.UUID]string) string {
	if w, ok := d.Ward(); ok {
		if wards[w] != "" {
			return "on " + wards[w]
		}
		return "on ward " + w.String()[:8]
	}
	return "everywhere"
}

func roleLabel(r string) string { return strings.ReplaceAll(r, "_", " ") }

// grantRole is POST /admin/roles (policy manage): gives a user a role, on a ward for a
// clinical role (a ward membership) or everywhere.
func (p *Portal) grantRole(c echo.Context, pr *auth.Principal, data adminData) error {
	r, ctx := c.Request(), c.Request().Context()
	f := grantForm{User: r.PostFormValue("user"), Role: r.PostFormValue("role"), Ward: r.PostFormValue("ward")}
	data.Grant = f
	obj := audit.Object{Type: "policy"}
	detail := map[string]any{"user": f.User, "role": f.Role, "domain": f.Ward}
	uid, perr := uuid.Parse(f.User)
	var u auth.User
	if perr == nil {
		u, perr = p.cfg.Auth.User(ctx, uid)
	}
	if perr != nil {
		data.Errors["g-user"] = &formError{Code: "invalid_user", Field: "g-user", Message: "Choose a user."}
	}
	domain, ferr, err := p.checkRoleWard(ctx, f.Role, f.Ward, "g-")
	if err != nil {
		return fmt.Errorf("portal: grant role: %w", err)
	}
	if ferr != nil {
		data.Errors[ferr.Field] = ferr
	}
	return p.finishForm(c, pr, data, formAction{name: "grant role", action: "policy.role_granted", obj: obj, detail: detail}, func(d *adminData) (*formError, error) {
		wards, err := p.wardNames(ctx)
		if err != nil {
			return nil, err
		}
		subject := auth.UserSubject(uid)
		what := roleLabel(f.Role) + " " + where(domain, wards)
		err = p.cfg.Auth.GrantRole(ctx, pr.Origin(requestID(c), c.RealIP()), subject, f.Role, domain)
		if err != nil {
			return stale(err, auth.ErrConflict, func() *formError {
				by := p.lastPolicyChange(ctx, "role_granted", detailIs(map[string]string{"subject": subject, "role": f.Role, "domain": string(domain)}))
				return &formError{Code: "role_already_held", Field: "g-role",
					Message: u.Profile.DisplayName + " already holds " + what + " (granted" + by + "). Nothing was changed."}
			})
		}
		d.Grant, d.Notice = grantForm{}, u.Profile.DisplayName+" now holds "+what+"."
		return nil, nil
	})
}

// revokeRole is POST /admin/roles/revoke (policy manage): takes a role grant away.
func (p *Portal) revokeRole(c echo.Context, pr *auth.Principal, data adminData) error {
	r, ctx := c.Request(), c.Request().Context()
	subject, role, dom := r.PostFormValue("subject"), r.PostFormValue("role"), r.PostFormValue("domain")
	domain, derr := auth.ParseDomain(dom)
	if _, ok := auth.LookupRole(role); !ok || derr != nil || !strings.Contains(subject, ":") {
		return echo.NewHTTPError(http.StatusBadRequest, "subject, role and domain must name a grant")
	}
	data.RevokeKey = subject + "|" + role + "|" + string(domain)
	obj := audit.Object{Type: "policy"}
	detail := map[string]any{"subject": subject, "role": role, "domain": string(domain)}
	wards, err := p.wardNames(ctx)
	if err != nil {
		return fmt.Errorf("portal: revoke role: %w", err)
	}
	what := roleLabel(role) + " " + where(domain, wards)
	return p.finishForm(c, pr, data, formAction{name: "revoke role", action: "policy.role_revoked", obj: obj, detail: detail}, func(d *adminData) (*formError, error) {
		if subject == pr.Subject && role == auth.RoleAdmin {
			return &formError{Code: "cannot_revoke_own_admin", Field: "revoke",
				Message: "You cannot take your own administrator role: ask another administrator. Nothing was changed."}, nil
		}
		err := p.cfg.Auth.RevokeRole(ctx, pr.Origin(requestID(c), c.RealIP()), subject, role, domain)
		if err != nil {
			return stale(err, auth.ErrNotFound, func() *formError {
				by := p.lastPolicyChange(ctx, "role_revoked", detailIs(map[string]string{"subject": subject, "role": role, "domain": string(domain)}))
				return &formError{Code: "role_not_held", Field: "revoke",
					Message: "Could not revoke " + what + ": it was already revoked" + by + ", after this page was loaded. Nothing was changed."}
			})
		}
		d.RevokeKey, d.Notice = "", "Revoked "+what+"."
		return nil, nil
	})
}

// resetMFA is POST /admin/mfa-reset (user manage): removes a user's second factors, ends
// their sessions and shows their new enrollment link once (auth.ResetMFAWithReason).
func (p *Portal) resetMFA(c echo.Context, pr *auth.Principal, data adminData) error {
	r, ctx := c.Request(), c.Request().Context()
	f := mfaForm{User: r.PostFormValue("user"), Reason: strings.TrimSpace(r.PostFormValue("reason"))}
	data.MFA = f
	uid, perr := uuid.Parse(f.User)
	var u auth.User
	if perr == nil {
		u, perr = p.cfg.Auth.User(ctx, uid)
	}
	switch {
	case perr != nil:
		data.Errors["m-user"] = &formError{Code: "invalid_user", Field: "m-user", Message: "Choose a user."}
	case uid == pr.ID:
		data.Errors["m-user"] = &formError{Code: "cannot_reset_self", Field: "m-user", Message: "You cannot reset your own second factor: ask another administrator."}
	case u.OIDC && !u.HasPassword:
		data.Errors["m-user"] = &formError{Code: "mfa_at_identity_provider", Field: "m-user", Message: "This user signs in with the identity provider, whose second factor is reset there."}
	}
	switch {
	case f.Reason == "":
		data.Errors["m-reason"] = &formError{Code: "reason_required", Field: "m-reason", Message: "Say why (a lost phone, a new device): it is kept in the audit trail."}
	case len(f.Reason) > 500:
		data.Errors["m-reason"] = &formError{Code: "reason_too_long", Field: "m-reason", Message: "At most 500 characters."}
	}
	a := formAction{name: "reset MFA", action: "user.mfa_reset", obj: audit.Object{Type: "user", ID: f.User}}
	return p.finishForm(c, pr, data, a, func(d *adminData) (*formError, error) {
		en, err := p.cfg.Auth.ResetMFAWithReason(ctx, pr.Origin(requestID(c), c.RealIP()), uid, f.Reason)
		if err != nil {
			return nil, err
		}
		link := en.Link(c.Scheme() + "://" + r.Host)
		if d.LinkQR, err = qrPNG(link); err != nil {
			return nil, err
		}
		d.Link, d.LinkExpires, d.MFA = link, en.ExpiresAt.UTC().Format(timeFormat), mfaForm{}
		d.Notice = "The second factor of " + u.Profile.DisplayName + " is reset and their sessions ended. Give them the enrollment link below; it is shown only now."
		return nil, nil
	})
}

// policyLine reads a policy line from the form.
func policyLine(r *http.Request) auth.Rule {
	return auth.Rule{Role: r.PostFormValue("role"), Object: r.PostFormValue("object"), Action: strings.TrimSpace(r.PostFormValue("action")),
		Scope: r.PostFormValue("scope")}
}

func validAction(a string) bool {
	if a == "*" {
		return true
	}
	if a == "" || len(a) > 64 {
		return false
	}
	for _, c := range a {
		if (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// addPolicyLine is POST /admin/policy/rules (policy manage).
func (p *Portal) addPolicyLine(c echo.Context, pr *auth.Principal, data adminData) error {
	ctx := c.Request().Context()
	rl := policyLine(c.Request())
	data.Line = policyLineForm(rl)
	if _, ok := auth.LookupRole(rl.Role); !ok {
		data.Errors["p-role"] = &formError{Code: "invalid_role", Field: "p-role", Message: "Choose a role."}
	}
	if !slices.Contains(policyObjects, rl.Object) {
		data.Errors["p-object"] = &formError{Code: "invalid_object", Field: "p-object", Message: "Choose an object."}
	}
	if !validAction(rl.Action) {
		data.Errors["p-action"] = &formError{Code: "invalid_action", Field: "p-action", Message: "An action is a lower-case word (read, manage, …) or * for every action."}
	}
	if !slices.Contains(policyScopes, rl.Scope) {
		data.Errors["p-scope"] = &formError{Code: "invalid_scope", Field: "p-scope", Message: "Choose a scope."}
	}
	a := formAction{name: "add policy line", action: "policy.rule_added", obj: audit.Object{Type: "policy"}, detail: map[string]any{"rule": rl}}
	return p.finishForm(c, pr, data, a, func(d *adminData) (*formError, error) {
		err := p.cfg.Auth.AddRule(ctx, pr.Origin(requestID(c), c.RealIP()), rl)
		if err != nil {
			return stale(err, auth.ErrConflict, func() *formError {
				by := p.lastPolicyChange(ctx, "rule_added", ruleDetailIs(rl))
				msg := "The policy already has this line"
				if by != "" {
					msg += " (added" + by + ")"
				}
				return &formError{Code: "rule_exists", Field: "p-action", Message: msg + ". Nothing was changed."}
			})
		}
		d.Line, d.Notice = policyLineForm{}, "Policy line added: "+rl.String()+"."
		return nil, nil
	})
}

// removePolicyLine is POST /admin/policy/rules/remove (policy manage). A line that gives a
// role the viewer holds the right to manage the policy cannot be removed by that viewer
// (they would lock themselves — and maybe everyone — out of the policy).
func (p *Portal) removePolicyLine(c echo.Context, pr *auth.Principal, data adminData) error {
	ctx := c.Request().Context()
	rl := policyLine(c.Request())
	data.RemoveLine = rl.String()
	a := formAction{name: "remove policy line", action: "policy.rule_removed", obj: audit.Object{Type: "policy"}, detail: map[string]any{"rule": rl}}
	return p.finishForm(c, pr, data, a, func(d *adminData) (*formError, error) {
		if rl.Object == auth.ObjPolicy && (rl.Action == "manage" || rl.Action == "*") {
			grants, err := p.cfg.Auth.Grants(ctx, pr.Subject)
			if err != nil {
				return nil, err
			}
			for _, g := range grants {
				if g.Role == rl.Role {
					return &formError{Code: "cannot_remove_own_access", Field: "line",
						Message: "This line lets you manage the policy: removing it would lock you out. Ask another administrator. Nothing was changed."}, nil
				}
			}
		}
		err := p.cfg.Auth.RemoveRule(ctx, pr.Origin(requestID(c), c.RealIP()), rl)
		if err != nil {
			return stale(err, auth.ErrNotFound, func() *formError {
				by := p.lastPolicyChange(ctx, "rule_removed", ruleDetailIs(rl))
				return &formError{Code: "rule_not_found", Field: "line",
					Message: "Could not remove “" + rl.String() + "”: it was already removed" + by + ", after this page was loaded. Nothing was changed."}
			})
		}
		d.RemoveLine, d.Notice = "", "Policy line removed: "+rl.String()+"."
		return nil, nil
	})
}

// mayWriteWardRules reports whether pr may change the rules of ward w (rule write there).
func (p *Portal) mayWriteWardRules(pr *auth.Principal, w uuid.UUID) bool {
	_, err := p.cfg.Auth.Enforcer().Allow(pr, "write", auth.Target{Object: auth.ObjRule, Ward: w})
	return err == nil
}

// wardNEWS2Forms are the settings forms of the wards whose rules pr may change.
func (p *Portal) wardNEWS2Forms(ctx context.Context, pr *auth.Principal, wards map[uuid.UUID]string, names func(string, *string) (string, bool)) ([]wardNEWS2Form, error) {
	var ids []uuid.UUID
	for id := range wards {
		if p.mayWriteWardRules(pr, id) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	settings, err := p.cfg.Rules.WardNEWS2Settings(ctx)
	if err != nil {
		return nil, err
	}
	var out []wardNEWS2Form
	for _, id := range ids {
		f := wardNEWS2Form{WardID: id.String(), Ward: wards[id], Charted: map[string]bool{}, MaxAge: "4h", Current: "the defaults (every parameter from devices)"}
		if s, ok := settings[id]; ok {
			for _, c := range s.Charted {
				f.Charted[c] = true
			}
			by := s.UpdatedBy
			who, _ := names("user", &by)
			f.MaxAge, f.Since = shortDuration(s.MaxAge), s.UpdatedAt.UTC().Format(time.RFC3339Nano)
			f.Current = strings.Join(s.Charted, ", ") + " charted by hand, valid for " + f.MaxAge + "; set by " + who + " at " + s.UpdatedAt.UTC().Format(timeFormat)
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ward < out[j].Ward })
	return out, nil
}

// setWardNEWS2 is POST /admin/wards/:id/news2 (rule write on that ward: charge nurses of the
// ward): which NEWS2 parameters the ward charts by hand and for how long a charted value
// counts (rules.Engine.SetWardNEWS2If, against the settings the page showed).
func (p *Portal) setWardNEWS2(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	if p.cfg.Rules == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the rules engine is not configured")
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "ward id must be a UUID")
	}
	ctx, r := c.Request().Context(), c.Request()
	wards, err := p.wardNames(ctx)
	if err != nil {
		return fmt.Errorf("portal: ward NEWS2: %w", err)
	}
	if _, ok := wards[id]; !ok {
		return echo.ErrNotFound
	}
	if !p.mayWriteWardRules(pr, id) {
		return p.render(c, http.StatusForbidden, "denied.html", deniedData{base: p.base("Not allowed", pr, creds.SessionToken), Object: auth.ObjRule, Action: "write"})
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	data := adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr), Errors: map[string]*formError{}}
	if err := r.ParseForm(); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "unreadable form")
	}
	in := wardNEWS2Form{WardID: id.String(), Charted: map[string]bool{}, MaxAge: strings.TrimSpace(r.PostFormValue("max_age")),
		Reason: strings.TrimSpace(r.PostFormValue("reason")), Since: r.PostFormValue("since")}
	charted := r.PostForm["charted"]
	for _, c := range charted {
		in.Charted[c] = true
		if !slices.Contains(rules.WardChartableParams(), c) {
			data.Errors["n-charted"] = &formError{Code: "invalid_parameter", Field: "n-charted", Message: "Choose among the NEWS2 parameters listed."}
		}
	}
	maxAge, derr := time.ParseDuration(in.MaxAge)
	if derr != nil || maxAge < time.Minute || maxAge > 24*time.Hour || maxAge%time.Minute != 0 {
		data.Errors["n-max_age"] = &formError{Code: "invalid_max_age", Field: "n-max_age", Message: "A duration between 1m and 24h in whole minutes, such as 4h or 90m."}
	}
	switch {
	case in.Reason == "":
		data.Errors["n-reason"] = &formError{Code: "reason_required", Field: "n-reason", Message: "Say why (it is kept with the settings' version)."}
	case len(in.Reason) > 500:
		data.Errors["n-reason"] = &formError{Code: "reason_too_long", Field: "n-reason", Message: "At most 500 characters."}
	}
	var since time.Time
	if in.Since != "" {
		if since, err = time.Parse(time.RFC3339Nano, in.Since); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "since must be the RFC 3339 time the page showed")
		}
	}
	data.WardForm, data.ErrWard = in, id.String()
	a := formAction{name: "ward NEWS2", action: "rules.ward_news2_set", obj: audit.Object{Type: "ward", ID: id.String()},
		detail: map[string]any{"charted": charted, "charted_max_age": in.MaxAge}, conflictAudited: true}
	return p.finishForm(c, pr, data, a, func(d *adminData) (*formError, error) {
		by := audit.Event{Actor: pr.Actor(), RequestID: requestID(c), SourceAddr: c.RealIP()}
		err := p.cfg.Rules.SetWardNEWS2If(ctx, by, id, charted, maxAge, in.Reason, since)
		if err != nil {
			return stale(err, rules.ErrVersionConflict, func() *formError { // audited by the rules engine (stale_settings)
				msg := "The NEWS2 settings of " + wards[id] + " were changed after this page was loaded"
				if cur, err := p.cfg.Rules.WardNEWS2Settings(ctx); err == nil {
					if s, ok := cur[id]; ok {
						by := s.UpdatedBy
						who, _ := p.actorNames(ctx)("user", &by)
						msg += ", by " + who + " at " + s.UpdatedAt.UTC().Format(timeFormat)
					}
				}
				d.WardForm = wardNEWS2Form{}
				return &formError{Code: "settings_changed", Field: "n-form", Message: msg + ". Nothing was changed: the form now shows the current settings; check them and save again."}
			})
		}
		d.WardForm, d.ErrWard, d.Notice = wardNEWS2Form{}, "", "NEWS2 settings of "+wards[id]+" saved."
		return nil, nil
	})
}

// careTeamTarget is the authorization target of a patient's care team.
func careTeamTarget(pt core.Patient, team []core.CareTeamMember) auth.Target {
	t := auth.Target{Object: auth.ObjCareTeam, Patient: pt.ID}
	if pt.WardID != nil {
		t.Ward = *pt.WardID
	}
	for _, m := range team {
		t.CareTeam = append(t.CareTeam, m.ClinicianID)
	}
	return t
}

// careTeamForm starts a care-team change: the patient, their team, and care_team manage on
// them (403, audited as access.denied, otherwise).
func (p *Portal) careTeamForm(c echo.Context) (*auth.Principal, adminData, core.Patient, []core.CareTeamMember, bool, error) {
	var pt core.Patient
	pr, creds, err := p.viewer(c)
	if err != nil {
		return nil, adminData{}, pt, nil, true, err
	}
	if pr == nil {
		return nil, adminData{}, pt, nil, true, toSignIn(c)
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return nil, adminData{}, pt, nil, true, echo.NewHTTPError(http.StatusBadRequest, "patient id must be a UUID")
	}
	ctx := c.Request().Context()
	if pt, err = p.cfg.Core.Patient(ctx, id); errors.Is(err, core.ErrNotFound) {
		return nil, adminData{}, pt, nil, true, echo.ErrNotFound
	} else if err != nil {
		return nil, adminData{}, pt, nil, true, fmt.Errorf("portal: care team: %w", err)
	}
	team, err := p.cfg.Core.CareTeam(ctx, id)
	if err != nil {
		return nil, adminData{}, pt, nil, true, fmt.Errorf("portal: care team: %w", err)
	}
	if _, err := p.cfg.Auth.Enforcer().Allow(pr, "manage", careTeamTarget(pt, team)); err != nil {
		p.auditDenied(c, pr, id, auth.ObjCareTeam, "manage")
		return nil, adminData{}, pt, nil, true, p.render(c, http.StatusForbidden, "denied.html",
			deniedData{base: p.base("Not allowed", pr, creds.SessionToken), Object: auth.ObjCareTeam, Action: "manage"})
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return nil, adminData{}, pt, nil, true, err
	}
	data := adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr), Errors: map[string]*formError{}, ErrPatient: id.String()}
	return pr, data, pt, team, false, nil
}

// clinicalUser reports whether u is an active user holding a clinical role (who may be on a
// care team).
func clinicalUser(u auth.User) bool {
	if u.Status != "active" {
		return false
	}
	for _, g := range u.Roles {
		if r, ok := auth.LookupRole(g.Role); ok && r.Clinical {
			return true
		}
	}
	return false
}

// addCareTeamMember is POST /admin/care-teams/:id (care_team manage on the patient): puts a
// clinician on the patient's care team in a role (or changes their role).
func (p *Portal) addCareTeamMember(c echo.Context) error {
	pr, data, pt, team, done, err := p.careTeamForm(c)
	if done {
		return err
	}
	r, ctx := c.Request(), c.Request().Context()
	f := careTeamForm{Clinician: r.PostFormValue("clinician"), Role: strings.TrimSpace(r.PostFormValue("role"))}
	data.CareForm = f
	uid, perr := uuid.Parse(f.Clinician)
	var u auth.User
	if perr == nil {
		u, perr = p.cfg.Auth.User(ctx, uid)
	}
	if perr != nil || !clinicalUser(u) {
		data.Errors["c-clinician"] = &formError{Code: "invalid_clinician", Field: "c-clinician", Message: "Choose an active clinician."}
	}
	switch {
	case f.Role == "":
		data.Errors["c-role"] = &formError{Code: "role_required", Field: "c-role", Message: "Their role in the team (nurse, physician, …)."}
	case len(f.Role) > 64:
		data.Errors["c-role"] = &formError{Code: "role_too_long", Field: "c-role", Message: "At most 64 characters."}
	}
	a := formAction{name: "add care team member", action: "care_team.member_added", obj: audit.Object{Type: "patient", ID: pt.ID.String()},
		detail: map[string]any{"clinician_id": f.Clinician, "role": f.Role}}
	return p.finishForm(c, pr, data, a, func(d *adminData) (*formError, error) {
		already := func(since time.Time) *formError {
			return &formError{Code: "already_member", Field: "c-clinician",
				Message: u.Profile.DisplayName + " is already on the team as " + f.Role + " (since " + since.UTC().Format(timeFormat) + "). Nothing was changed."}
		}
		for _, m := range team {
			if m.ClinicianID == uid.String() && m.Role == f.Role {
				return already(m.AddedAt), nil
			}
		}
		// The page's team may be stale (another administrator adding the same member at the
		// same moment): core decides atomically, in the insert itself.
		by := audit.Event{Actor: pr.Actor(), RequestID: requestID(c), SourceAddr: c.RealIP()}
		_, err := p.cfg.Core.JoinCareTeam(ctx, by, pt.ID, uid.String(), f.Role)
		if errors.Is(err, core.ErrAlreadyMember) {
			since := p.cfg.Now()
			if now, err := p.cfg.Core.CareTeam(ctx, pt.ID); err == nil {
				for _, m := range now {
					if m.ClinicianID == uid.String() {
						since = m.AddedAt
					}
				}
			}
			return already(since), nil
		}
		if err != nil {
			return nil, err
		}
		d.CareForm, d.ErrPatient = careTeamForm{}, ""
		d.Notice = u.Profile.DisplayName + " is on the care team of " + pt.PHI.GivenName + " " + pt.PHI.FamilyName + " as " + f.Role + "."
		return nil, nil
	})
}

// removeCareTeamMember is POST /admin/care-teams/:id/remove (care_team manage on the patient).
func (p *Portal) removeCareTeamMember(c echo.Context) error {
	pr, data, pt, _, done, err := p.careTeamForm(c)
	if done {
		return err
	}
	ctx := c.Request().Context()
	clin := c.Request().PostFormValue("clinician")
	if _, err := uuid.Parse(clin); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "clinician must be a user id")
	}
	name, _ := p.actorNames(ctx)("user", &clin)
	a := formAction{name: "remove care team member", action: "care_team.member_removed", obj: audit.Object{Type: "patient", ID: pt.ID.String()},
		detail: map[string]any{"clinician_id": clin}}
	return p.finishForm(c, pr, data, a, func(d *adminData) (*formError, error) {
		by := audit.Event{Actor: pr.Actor(), RequestID: requestID(c), SourceAddr: c.RealIP()}
		err := p.cfg.Core.RemoveCareTeamMember(ctx, by, pt.ID, clin)
		if err != nil {
			return stale(err, core.ErrNotFound, func() *formError {
				return &formError{Code: "member_not_found", Field: "c-member",
					Message: name + " is no longer on this care team: removed after this page was loaded. Nothing was changed."}
			})
		}
		d.ErrPatient, d.Notice = "", name+" is off the care team of "+pt.PHI.GivenName+" "+pt.PHI.FamilyName+"."
		return nil, nil
	})
}

type careTeamForm struct{ Clinician, Role string }

// chartable is a NEWS2 parameter a ward may chart by hand, with its name for people.
type chartable struct{ Name, Label string }

var chartableLabels = map[string]string{"rr": "Respiratory rate", "spo2": "SpO2", "o2flow": "Oxygen flow", "fio2": "FiO2",
	"sbp": "Systolic blood pressure", "hr": "Heart rate", "acvpu": "Consciousness (ACVPU)", "temp": "Temperature"}

func chartables() []chartable {
	var out []chartable
	for _, n := range rules.WardChartableParams() {
		l := chartableLabels[n]
		if l == "" {
			l = n
		}
		out = append(out, chartable{n, l})
	}
	return out
}
