package auth

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
)

// Role names. Roles are granted per domain: "*" (everywhere) or a care unit ("ward:<id>").
const (
	RoleClinician        = "clinician"         // sees and acts on the patients of their wards and care teams
	RoleChargeNurse      = "charge_nurse"      // a clinician who also runs the ward: admissions, care teams, silences, rules
	RoleDeviceTechnician = "device_technician" // manages devices; sees no PHI
	RoleQuality          = "quality"           // reads the audit trail and evidence, reviews break-glass
	RoleAdmin            = "admin"             // manages users, service accounts and policy; no clinical data
	RoleAuditor          = "auditor"           // an internal or external auditor: reads and verifies the audit trail
)

// RoleInfo describes a role.
type RoleInfo struct {
	Name        string
	Description string
	// SeesPHI: holders can see protected health information or personal data, so local
	// sign-in requires a second factor (TOTP or a passkey) for them.
	SeesPHI bool
	// Clinical: the role can be granted per ward (others are granted for "*" only).
	Clinical bool
}

// Roles lists every role Vigil knows. The policy decides what each may do.
var Roles = []RoleInfo{
	{RoleClinician, "sees and acts on the patients of their wards and care teams; may break the glass", true, true},
	{RoleChargeNurse, "a clinician who also runs the ward: admissions, care teams, alarm silences, ward rules", true, true},
	{RoleDeviceTechnician, "registers, enrolls, suspends and assigns devices; sees no PHI", false, false},
	{RoleQuality, "reads the audit trail, exports audit packs and evidence, reviews break-glass access", true, false},
	{RoleAdmin, "manages users, service accounts, roles and policy; cannot read clinical data without a clinical role", true, false},
	{RoleAuditor, "an internal or external auditor (regulatory, notified body): reads the audit trail and starts its full re-verification", true, false},
}

// LookupRole returns the role named name.
func LookupRole(name string) (RoleInfo, bool) {
	for _, r := range Roles {
		if r.Name == name {
			return r, true
		}
	}
	return RoleInfo{}, false
}

// Domain is where a role is held: "*" (every care unit) or "ward:<uuid>".
type Domain string

// AllDomains is the domain of a role held everywhere.
const AllDomains Domain = "*"

// WardDomain is the domain of one care unit.
func WardDomain(ward uuid.UUID) Domain { return Domain("ward:" + ward.String()) }

// ParseDomain parses "*", "ward:<uuid>" or a bare ward uuid.
func ParseDomain(s string) (Domain, error) {
	if s == "*" || s == "" {
		return AllDomains, nil
	}
	id, err := uuid.Parse(strings.TrimPrefix(s, "ward:"))
	if err != nil {
		return "", fmt.Errorf("%w: domain %q: want \"*\" or ward:<uuid>", ErrInvalid, s)
	}
	return WardDomain(id), nil
}

// Ward returns the ward of a ward domain.
func (d Domain) Ward() (uuid.UUID, bool) {
	id, err := uuid.Parse(strings.TrimPrefix(string(d), "ward:"))
	return id, err == nil && strings.HasPrefix(string(d), "ward:")
}

// Objects and actions. A route declares the (object, action) it needs.
const (
	ObjPatient        = "patient"         // patient record (identifying data); list, read, write
	ObjObservation    = "observation"     // vitals and waveforms; read, chart (hand-entered vitals, documented oxygen)
	ObjAlarm          = "alarm"           // list, read, acknowledge, resolve, silence
	ObjCareTeam       = "care_team"       // read, manage
	ObjRule           = "rule"            // clinical rule settings; read, write
	ObjStream         = "stream"          // live event stream; subscribe
	ObjBreakGlass     = "break_glass"     // open (clinicians), review (quality)
	ObjDevice         = "device"          // read, manage, enroll
	ObjAudit          = "audit"           // read, export, verify (start a full re-verification)
	ObjEvidence       = "evidence"        // read (requirements, traceability, validation, packs)
	ObjUser           = "user"            // read, manage
	ObjServiceAccount = "service_account" // read, manage
	ObjPolicy         = "policy"          // read, manage (rules and role grants)
	ObjSite           = "site"            // sites and wards; read, manage
	ObjWebhook        = "webhook"         // manage
	ObjSubscription   = "subscription"    // manage (FHIR Subscriptions: sending patients' data to an outside endpoint)
)

// Scopes of policy lines (see model.conf).
const (
	ScopeGlobal     = "global"
	ScopeWard       = "ward"
	ScopeAny        = "any"
	ScopeCareTeam   = "care_team"
	ScopeBreakGlass = "break_glass"
)

var scopes = []string{ScopeGlobal, ScopeWard, ScopeAny, ScopeCareTeam, ScopeBreakGlass}

// Rule is one policy line: holders of Role may do Action on Object within Scope.
type Rule struct {
	Role   string `json:"role"`
	Object string `json:"object"`
	Action string `json:"action"`
	Scope  string `json:"scope"`
}

func (r Rule) String() string {
	return fmt.Sprintf("p, %s, %s, %s, %s", r.Role, r.Object, r.Action, r.Scope)
}

func (r Rule) validate() error {
	if _, ok := LookupRole(r.Role); !ok {
		return fmt.Errorf("%w: unknown role %q", ErrInvalid, r.Role)
	}
	if !slices.Contains(scopes, r.Scope) {
		return fmt.Errorf("%w: unknown scope %q (one of %s)", ErrInvalid, r.Scope, strings.Join(scopes, ", "))
	}
	if !nameRE(r.Object) || (r.Action != "*" && !nameRE(r.Action)) {
		return fmt.Errorf("%w: object and action are lower-case names", ErrInvalid)
	}
	return nil
}

func nameRE(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && c != '_' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// clinicalRules is what a clinician may do on the patients they care for, by each basis.
func clinicalRules(role string) []Rule {
	var out []Rule
	add := func(obj, act string, sc ...string) {
		for _, s := range sc {
			out = append(out, Rule{role, obj, act, s})
		}
	}
	add(ObjPatient, "list", ScopeAny)
	add(ObjAlarm, "list", ScopeAny)
	add(ObjStream, "subscribe", ScopeAny)
	add(ObjBreakGlass, "open", ScopeAny)
	add(ObjPatient, "read", ScopeWard, ScopeCareTeam, ScopeBreakGlass)
	add(ObjObservation, "read", ScopeWard, ScopeCareTeam, ScopeBreakGlass)
	// Charting: vitals measured by hand and the documented oxygen of their own patients.
	add(ObjObservation, "chart", ScopeWard, ScopeCareTeam)
	add(ObjAlarm, "read", ScopeWard, ScopeCareTeam, ScopeBreakGlass)
	add(ObjAlarm, "acknowledge", ScopeWard, ScopeCareTeam, ScopeBreakGlass)
	add(ObjAlarm, "resolve", ScopeWard, ScopeCareTeam)
	add(ObjCareTeam, "read", ScopeWard, ScopeCareTeam)
	// Rule definitions (thresholds, NEWS2 bands) and the list of sites and wards are not
	// patient data: every clinician reads them.
	add(ObjRule, "read", ScopeAny)
	add(ObjSite, "read", ScopeAny)
	return out
}

// DefaultPolicy is the policy a new installation starts with (and the demo's): see
// docs/access.md for the table.
func DefaultPolicy() []Rule {
	rules := clinicalRules(RoleClinician)
	rules = append(rules, clinicalRules(RoleChargeNurse)...)
	for _, r := range []Rule{
		{RoleChargeNurse, ObjPatient, "write", ScopeWard},
		{RoleChargeNurse, ObjCareTeam, "manage", ScopeWard},
		{RoleChargeNurse, ObjAlarm, "silence", ScopeWard},
		{RoleChargeNurse, ObjRule, "write", ScopeWard},
		{RoleDeviceTechnician, ObjDevice, "read", ScopeGlobal},
		{RoleDeviceTechnician, ObjDevice, "manage", ScopeGlobal},
		{RoleDeviceTechnician, ObjDevice, "enroll", ScopeGlobal},
		{RoleDeviceTechnician, ObjSite, "read", ScopeGlobal},
		{RoleQuality, ObjAudit, "read", ScopeGlobal},
		{RoleQuality, ObjAudit, "export", ScopeGlobal},
		{RoleQuality, ObjEvidence, "read", ScopeGlobal},
		{RoleQuality, ObjBreakGlass, "review", ScopeGlobal},
		{RoleQuality, ObjPolicy, "read", ScopeGlobal},
		{RoleAuditor, ObjAudit, "read", ScopeGlobal},
		{RoleAuditor, ObjAudit, "verify", ScopeGlobal},
		{RoleAdmin, ObjUser, "read", ScopeGlobal},
		{RoleAdmin, ObjUser, "manage", ScopeGlobal},
		{RoleAdmin, ObjServiceAccount, "read", ScopeGlobal},
		{RoleAdmin, ObjServiceAccount, "manage", ScopeGlobal},
		{RoleAdmin, ObjPolicy, "read", ScopeGlobal},
		{RoleAdmin, ObjPolicy, "manage", ScopeGlobal},
		{RoleAdmin, ObjSite, "read", ScopeGlobal},
		{RoleAdmin, ObjSite, "manage", ScopeGlobal},
		{RoleAdmin, ObjWebhook, "manage", ScopeGlobal},
		{RoleAdmin, ObjSubscription, "manage", ScopeGlobal},
		{RoleAdmin, ObjDevice, "read", ScopeGlobal},
	} {
		rules = append(rules, r)
	}
	return rules
}
