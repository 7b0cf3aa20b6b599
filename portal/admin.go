package portal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core/rules"
)

// The administration page (issue #15): users with their roles and ward memberships, the
// roles, the policy with its versions and who changed it, the break-glass review queue, and
// the clinical rules (thresholds) with their versions and who made each. Each section is
// shown only to a viewer the policy lets read it; the page opens for anyone who may read at
// least one (admin: users and policy; quality: policy and break-glass review; clinicians:
// rules).

// adminSections are the sections and the permission each needs.
var adminSections = []struct{ name, obj, act string }{
	{"users", auth.ObjUser, "read"},
	{"policy", auth.ObjPolicy, "read"},
	{"breakglass", auth.ObjBreakGlass, "review"},
	{"rules", auth.ObjRule, "read"},
}

type userView struct {
	ID                uuid.UUID
	Name, Email       string
	Status            string
	MFA               string
	Roles             []string // "clinician on Ward 7A", "quality everywhere"
	Created           string
	OIDC, HasPassword bool
}

type policyVersionView struct {
	Version       int64
	At, Who, What string
	Detail        string
}

type grantView struct {
	ID                     uuid.UUID
	User, Patient, Reason  string
	Opened, Expires, State string
}

type ruleVersionView struct {
	Version      int
	Enabled      bool
	At, Who, Why string
	Params       string
}

type ruleView struct {
	ID, Name, Kind string
	Versions       []ruleVersionView // newest first
}

type adminData struct {
	base
	Show       map[string]bool
	Users      []userView
	Roles      []auth.RoleInfo
	Rules      []auth.Rule
	History    []policyVersionView
	Grants     []grantView
	Clinical   []ruleView
	CareTeams  []careTeamView
	WardRules  []wardSettingView
	Notice     string
	Errors     map[string]*formError
	ReviewNote string
	ReviewID   string
	// Adding users (admin_users.go): the form, the wards to choose from, whether the viewer
	// may add and disable users, and the new user's enrollment link (shown once).
	NewUser     newUserForm
	Wards       []wardOption
	AllRoles    []auth.RoleInfo
	MayManage   bool
	MayAdd      bool
	Link        string
	LinkExpires string
	LinkQR      template.URL
	// The further forms (admin_forms.go): what was submitted, and which row or ward a
	// refusal belongs to.
	MayPolicy     bool // policy manage: grant and revoke roles, add and remove policy lines
	UserOptions   []userOption
	RoleGrants    []roleGrantView
	Grant         grantForm
	RevokeKey     string
	MFA           mfaForm
	Line          policyLineForm
	RemoveLine    string
	PolicyObjects []string
	PolicyScopes  []string
	WardForms     []wardNEWS2Form
	WardForm      wardNEWS2Form
	ErrWard       string
	Chartable     []chartable
	Clinicians    []userOption
	CareForm      careTeamForm
	ErrPatient    string
}

// mayAdmin reports which sections pr may read.
func (p *Portal) mayAdmin(pr *auth.Principal) map[string]bool {
	show := map[string]bool{}
	for _, s := range adminSections {
		if s.name == "rules" && p.cfg.Rules == nil {
			continue
		}
		if p.allowed(pr, s.obj, s.act) {
			show[s.name] = true
		}
	}
	if p.mayReadCareTeams(pr) { // per patient: admin_careteams.go
		show["careteams"] = true
	}
	return show
}

// adminPage is GET /admin.
func (p *Portal) adminPage(c echo.Context) error {
	pr, creds, err := p.viewer(c)
	if err != nil {
		return err
	}
	if pr == nil {
		return toSignIn(c)
	}
	data := adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr)}
	return p.renderAdmin(c, http.StatusOK, pr, data)
}

func (p *Portal) renderAdmin(c echo.Context, status int, pr *auth.Principal, data adminData) error {
	if len(data.Show) == 0 {
		return p.render(c, http.StatusForbidden, "denied.html", deniedData{base: data.base, Object: "administration", Action: "read"})
	}
	ctx := c.Request().Context()
	names := p.actorNames(ctx)
	wards, err := p.wardNames(ctx)
	if err != nil {
		return fmt.Errorf("portal: admin: %w", err)
	}
	data.MayPolicy = p.allowed(pr, auth.ObjPolicy, "manage")
	var users []auth.User
	if data.Show["users"] || data.Show["careteams"] {
		if users, err = p.cfg.Auth.Users(ctx); err != nil {
			return fmt.Errorf("portal: admin users: %w", err)
		}
	}
	if data.Show["users"] {
		data.Users = userViewsOf(users, wards)
		data.MayManage = p.allowed(pr, auth.ObjUser, "manage")
		data.MayAdd = data.MayManage && data.MayPolicy
		data.AllRoles = auth.Roles
		for id, n := range wards {
			data.Wards = append(data.Wards, wardOption{ID: string(auth.WardDomain(id)), Name: n})
		}
		sort.Slice(data.Wards, func(i, j int) bool { return data.Wards[i].Name < data.Wards[j].Name })
		for _, u := range users {
			data.UserOptions = append(data.UserOptions, userOption{ID: u.ID.String(), Name: u.Profile.DisplayName + " (" + u.Profile.Email + ")"})
			for _, g := range u.Roles {
				data.RoleGrants = append(data.RoleGrants, roleGrantView{Key: g.Subject + "|" + g.Role + "|" + string(g.Domain), Subject: g.Subject,
					Who: u.Profile.DisplayName, Role: g.Role, Domain: string(g.Domain), Where: where(g.Domain, wards), Source: g.Source,
					MayRevoke: data.MayPolicy && !(g.Subject == pr.Subject && g.Role == auth.RoleAdmin)})
			}
		}
		sort.SliceStable(data.UserOptions, func(i, j int) bool { return data.UserOptions[i].Name < data.UserOptions[j].Name })
	}
	if data.Show["policy"] || data.Show["users"] {
		data.Roles = auth.Roles
	}
	if data.Show["policy"] {
		if data.Rules, err = p.cfg.Auth.Rules(ctx); err != nil {
			return fmt.Errorf("portal: admin policy: %w", err)
		}
		sort.Slice(data.Rules, func(i, j int) bool { return data.Rules[i].String() < data.Rules[j].String() })
		data.PolicyObjects, data.PolicyScopes = policyObjects, policyScopes
		hist, err := p.cfg.Auth.PolicyHistory(ctx, 50)
		if err != nil {
			return fmt.Errorf("portal: admin policy: %w", err)
		}
		for _, h := range hist {
			// The actor is "<kind>:<id>" (user:<uuid>, service:vigil): people by name.
			who := h.Actor
			if id, ok := strings.CutPrefix(h.Actor, "user:"); ok {
				if _, err := uuid.Parse(id); err == nil {
					who, _ = names("user", &id)
				}
			}
			data.History = append(data.History, policyVersionView{Version: h.Version, At: h.ChangedAt.UTC().Format("2006-01-02 15:04 UTC"),
				Who: who, What: h.Change, Detail: compactJSON(h.Detail, wards)})
		}
	}
	if data.Show["breakglass"] {
		gs, err := p.cfg.Auth.BreakGlassGrants(ctx, true, 100)
		if err != nil {
			return fmt.Errorf("portal: admin break-glass: %w", err)
		}
		for _, g := range gs {
			uid := g.UserID.String()
			who, _ := names("user", &uid)
			state := "open until " + g.ExpiresAt.UTC().Format("15:04 UTC")
			if g.ClosedAt != nil || !g.ExpiresAt.After(p.cfg.Now()) {
				state = "ended"
			}
			data.Grants = append(data.Grants, grantView{ID: g.ID, User: who, Patient: g.PatientID.String(), Reason: g.Reason,
				Opened: g.OpenedAt.UTC().Format("2006-01-02 15:04 UTC"), State: state})
		}
	}
	if data.Show["careteams"] {
		if data.CareTeams, err = p.careTeamViews(ctx, c, pr, names); err != nil {
			return fmt.Errorf("portal: admin: %w", err)
		}
		for i := range data.CareTeams {
			if data.CareTeams[i].PatientID == data.ErrPatient {
				data.CareTeams[i].Form, data.CareTeams[i].Errs = data.CareForm, data.Errors
			}
		}
		for _, u := range users {
			if clinicalUser(u) {
				data.Clinicians = append(data.Clinicians, userOption{ID: u.ID.String(), Name: u.Profile.DisplayName})
			}
		}
		sort.SliceStable(data.Clinicians, func(i, j int) bool { return data.Clinicians[i].Name < data.Clinicians[j].Name })
	}
	if data.Show["rules"] {
		if data.Clinical, err = p.ruleViews(ctx, names); err != nil {
			return fmt.Errorf("portal: admin rules: %w", err)
		}
		if data.WardRules, err = p.wardSettingViews(ctx, wards, names); err != nil {
			return fmt.Errorf("portal: admin ward settings: %w", err)
		}
		if data.WardForms, err = p.wardNEWS2Forms(ctx, pr, wards, names); err != nil {
			return fmt.Errorf("portal: admin ward settings: %w", err)
		}
		data.Chartable = chartables()
		for i, f := range data.WardForms { // a refused form shows what was submitted
			if f.WardID == data.ErrWard && data.WardForm.WardID == f.WardID {
				in := data.WardForm
				in.Ward, in.Current = f.Ward, f.Current
				data.WardForms[i] = in
			}
		}
	}
	return p.render(c, status, "admin.html", data)
}

func userViewsOf(us []auth.User, wards map[uuid.UUID]string) []userView {
	out := make([]userView, 0, len(us))
	for _, u := range us {
		v := userView{ID: u.ID, Name: u.Profile.DisplayName, Email: u.Profile.Email, Status: u.Status, OIDC: u.OIDC, HasPassword: u.HasPassword,
			Created: u.CreatedAt.UTC().Format("2006-01-02")}
		switch {
		case u.HasTOTP:
			v.MFA = "TOTP"
		case u.OIDC:
			v.MFA = "identity provider"
		default:
			v.MFA = "none"
		}
		for _, g := range u.Roles {
			v.Roles = append(v.Roles, roleLabel(g.Role)+" "+where(g.Domain, wards))
		}
		out = append(out, v)
	}
	return out
}

func (p *Portal) ruleViews(ctx context.Context, names func(string, *string) (string, bool)) ([]ruleView, error) {
	rs, err := p.cfg.Rules.Rules(ctx)
	if err != nil {
		return nil, err
	}
	var out []ruleView
	for _, r := range rs {
		vs, err := p.cfg.Rules.Versions(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		rv := ruleView{ID: r.ID, Name: r.Name, Kind: string(r.Kind)}
		sort.Slice(vs, func(i, j int) bool { return vs[i].Version > vs[j].Version })
		for _, v := range vs {
			by := v.CreatedBy
			who, _ := names("user", &by)
			rv.Versions = append(rv.Versions, ruleVersionView{Version: v.Version, Enabled: v.Enabled, At: v.CreatedAt.UTC().Format("2006-01-02 15:04 UTC"),
				Who: who, Why: v.Reason, Params: ruleParams(v)})
		}
		out = append(out, rv)
	}
	return out, nil
}

// ruleParams is a rule version's parameters as compact JSON (thresholds, windows).
func ruleParams(r rules.Rule) string {
	var v any
	switch {
	case r.Threshold != nil:
		v = r.Threshold
	case r.Rate != nil:
		v = r.Rate
	case r.NEWS2 != nil:
		v = r.NEWS2
	case r.Anomaly != nil:
		v = r.Anomaly
	case r.NoData != nil:
		v = r.NoData
	}
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// compactJSON is a policy change's detail, with ward domains named.
func compactJSON(v map[string]any, wards map[uuid.UUID]string) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	s := string(b)
	for id, name := range wards {
		s = strings.ReplaceAll(s, "ward:"+id.String(), "ward:"+name)
	}
	return s
}

// reviewBreakGlass is POST /admin/break-glass/:id/review (break_glass review): marks a
// grant reviewed with the reviewer's note (required), audited by auth.
func (p *Portal) reviewBreakGlass(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjBreakGlass, "review")
	if done {
		return err
	}
	if err := p.csrf(c, pr, creds); err != nil {
		return err
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "grant id must be a UUID")
	}
	note := strings.TrimSpace(c.Request().PostFormValue("note"))
	data := adminData{base: p.base("Administration", pr, creds.SessionToken), Show: p.mayAdmin(pr), ReviewNote: note, ReviewID: id.String(),
		Errors: map[string]*formError{}}
	switch {
	case note == "":
		data.Errors["note"] = &formError{Code: "note_required", Field: "note", Message: "Write what the review found (it is kept in the audit trail)."}
	case len(note) > 1000:
		data.Errors["note"] = &formError{Code: "note_too_long", Field: "note", Message: "At most 1000 characters."}
	}
	if len(data.Errors) > 0 {
		return p.renderAdmin(c, http.StatusUnprocessableEntity, pr, data)
	}
	err = p.cfg.Auth.ReviewBreakGlass(c.Request().Context(), pr.Origin(requestID(c), c.RealIP()), id, note)
	if errors.Is(err, auth.ErrNotFound) {
		data.Errors["note"] = &formError{Code: "already_reviewed", Field: "note", Message: "This access was already reviewed, or does not exist."}
		return p.renderAdmin(c, http.StatusConflict, pr, data)
	}
	if err != nil {
		return fmt.Errorf("portal: review break-glass: %w", err)
	}
	audited(c) // recorded by auth
	data.ReviewNote, data.ReviewID, data.Notice = "", "", "Review recorded."
	return p.renderAdmin(c, http.StatusOK, pr, data)
}
