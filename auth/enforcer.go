package auth

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
	"github.com/casbin/casbin/v2/persist"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/visibility"
)

//go:embed model.conf
var modelText string

// ModelText is the Casbin model of Vigil's policy (auth/model.conf).
func ModelText() string { return modelText }

// Target is what a request acts on: the object type and, for patient data, the care unit and
// patient it belongs to and the patient's care team (clinician ids, from the clinical core).
// The caller fills the facts it knows; auth decides.
type Target struct {
	Object   string    // ObjPatient, ObjObservation, ObjDevice, …
	Ward     uuid.UUID // the patient's (or object's) ward; zero if none
	Patient  uuid.UUID // the patient concerned; zero if none
	CareTeam []string  // clinician ids (user ids) on the patient's care team
}

// Decision is the outcome of one authorization question, with what decided it.
type Decision struct {
	Allowed bool   `json:"allowed"`
	Subject string `json:"subject"`
	// Rule is the policy line that allowed it (nil when denied).
	Rule *Rule `json:"rule,omitempty"`
	// Basis is the matched rule's scope: global, ward, any, care_team or break_glass.
	Basis string `json:"basis,omitempty"`
	// BreakGlass is the grant that allowed it when Basis is break_glass: the server MUST audit
	// such an access as a break-glass access.
	BreakGlass uuid.UUID `json:"break_glass,omitempty"`
	// Version is the policy version the decision was made with.
	Version int64 `json:"version"`
}

// Enforcer is the one authorization decision point: a Casbin enforcer over the policy in
// PostgreSQL plus the active break-glass grants. It answers from memory; Reload (after a change
// made through this process) and Refresh (changes made by another process) load a new policy
// version, swapped in atomically. Safe for concurrent use.
type Enforcer struct {
	pool   *pgxpool.Pool
	now    func() time.Time
	loadMu sync.Mutex
	cur    atomic.Pointer[snapshot]
}

type grantRef struct {
	id      uuid.UUID
	expires time.Time
}

// snapshot is one loaded policy version.
type snapshot struct {
	version int64
	e       *casbin.Enforcer                    // every rule: explanations, permissions with no rule
	byPerm  map[string]*casbin.Enforcer         // "<object>\x00<action>" → the rules for it only
	roles   map[string][]RoleGrant              // subject → role grants
	holds   map[string]map[string]bool          // subject → roles held in some domain
	glass   map[string]map[uuid.UUID][]grantRef // subject → patient → break-glass grants

	// roleBit numbers the roles granted in this version (at most 64), for decision profiles;
	// noProfile is set when there are more (then answers are remembered per subject).
	roleBit   map[string]uint64
	noProfile bool
	// wardNames are the domain names ("ward:<id>") of the wards roles are held in, made once.
	wardNames map[uuid.UUID]string

	// memo remembers Casbin's answers for this version. The model's matcher sees the subject
	// only through g(subject, role, "*"), g(subject, role, ward) and holds(subject, role): so
	// an answer depends only on the subject's profile for the question — the roles it holds
	// for every ward, in the target's ward, and anywhere — and on the object, the action and
	// the two facts (care team, break-glass). Thousands of users share a few dozen profiles,
	// so a question asked for the first time by one user is mostly answered from what Casbin
	// said for another of the same profile. Bounded: cleared when full.
	memoMu sync.RWMutex
	memo   map[memoKey]memoVal
}

// memoKey is a question as the matcher sees it: the subject's role profile (or, without
// profiles, the subject and ward themselves), the object, the action and the facts.
type memoKey struct {
	star, inWard, held  uint64
	sub, ward, obj, act string
	careTeam, glass     bool
}

// key returns the memo key of a question.
func (s *snapshot) key(sub, ward, obj, act string, careTeam, glass bool) memoKey {
	if s.noProfile || s.roleBit[sub] != 0 {
		// A subject named like a role matches it by name (HasLink): no profile for it.
		return memoKey{sub: sub, ward: ward, obj: obj, act: act, careTeam: careTeam, glass: glass}
	}
	k := memoKey{obj: obj, act: act, careTeam: careTeam, glass: glass}
	for _, g := range s.roles[sub] {
		bit := s.roleBit[g.Role]
		k.held |= bit
		if g.Domain == AllDomains {
			k.star |= bit
		}
		if string(g.Domain) == ward {
			k.inWard |= bit
		}
	}
	return k
}

type memoVal struct {
	ok   bool
	expl []string
}

// memoMax bounds the decisions remembered per policy version (≈ 100 bytes each).
const memoMax = 200_000

// enforceMemo answers the question (sub, ward, obj, act, careTeam, glass) with ce, from the
// memo when a subject of the same profile asked it before in this version.
func (s *snapshot) enforceMemo(ce *casbin.Enforcer, sub, ward, obj, act string, careTeam, glass bool) (bool, []string, error) {
	k := s.key(sub, ward, obj, act, careTeam, glass)
	s.memoMu.RLock()
	v, hit := s.memo[k]
	s.memoMu.RUnlock()
	if hit {
		return v.ok, v.expl, nil
	}
	ok, expl, err := ce.EnforceEx(sub, ward, obj, act, careTeam, glass)
	if err != nil {
		return false, nil, err
	}
	s.memoMu.Lock()
	if len(s.memo) >= memoMax {
		clear(s.memo)
	}
	s.memo[k] = memoVal{ok, expl}
	s.memoMu.Unlock()
	return ok, expl, nil
}

// RoleGrant is one role held by a subject in a domain (a Casbin grouping line).
type RoleGrant struct {
	Subject string `json:"subject"`
	Role    string `json:"role"`
	Domain  Domain `json:"domain"`
	Source  string `json:"source,omitempty"`
}

func newEnforcer(ctx context.Context, pool *pgxpool.Pool, now func() time.Time) (*Enforcer, error) {
	e := &Enforcer{pool: pool, now: now}
	if err := e.Reload(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// pgAdapter is the Casbin adapter over pgx: it loads auth_policy_rules inside the loading
// transaction. Changes never go through it (they are made, versioned and audited by Service),
// so its write methods refuse.
type pgAdapter struct {
	ctx context.Context
	tx  pgx.Tx
}

var errAdapterReadOnly = errors.New("auth: policy changes go through auth.Service (versioned, audited)")

func (a pgAdapter) LoadPolicy(m model.Model) error {
	rows, err := a.tx.Query(a.ctx, "SELECT ptype, v0, v1, v2, v3 FROM auth_policy_rules ORDER BY id")
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var pt, v0, v1, v2, v3 string
		if err := rows.Scan(&pt, &v0, &v1, &v2, &v3); err != nil {
			return err
		}
		line := []string{pt, v0, v1, v2}
		if pt == "p" {
			line = append(line, v3)
		}
		if err := persist.LoadPolicyArray(line, m); err != nil {
			return err
		}
	}
	return rows.Err()
}
func (pgAdapter) SavePolicy(model.Model) error                { return errAdapterReadOnly }
func (pgAdapter) AddPolicy(string, string, []string) error    { return errAdapterReadOnly }
func (pgAdapter) RemovePolicy(string, string, []string) error { return errAdapterReadOnly }
func (pgAdapter) RemoveFilteredPolicy(string, string, int, ...string) error {
	return errAdapterReadOnly
}

// Reload loads the current policy version and the active break-glass grants.
func (e *Enforcer) Reload(ctx context.Context) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	return e.reloadLocked(ctx)
}

func (e *Enforcer) reloadLocked(ctx context.Context) error {
	snap := &snapshot{roles: map[string][]RoleGrant{}, holds: map[string]map[string]bool{},
		glass: map[string]map[uuid.UUID][]grantRef{}, memo: map[memoKey]memoVal{}, roleBit: map[string]uint64{},
		wardNames: map[uuid.UUID]string{}}
	err := pgx.BeginTxFunc(ctx, e.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM auth_policy_versions").Scan(&snap.version); err != nil {
			return err
		}
		m, err := model.NewModelFromString(modelText)
		if err != nil {
			return err
		}
		ce, err := casbin.NewEnforcer(m)
		if err != nil {
			return err
		}
		ce.EnableAutoSave(false)
		ce.SetRoleManager(newGrantTable())
		ce.SetAdapter(pgAdapter{ctx, tx})
		if err := ce.LoadPolicy(); err != nil {
			return err
		}
		snap.e = ce
		rows, err := tx.Query(ctx, "SELECT v0, v1, v2, source FROM auth_policy_rules WHERE ptype = 'g' ORDER BY id")
		if err != nil {
			return err
		}
		var g RoleGrant
		var dom string
		if _, err := pgx.ForEachRow(rows, []any{&g.Subject, &g.Role, &dom, &g.Source}, func() error {
			g.Domain = Domain(dom)
			snap.roles[g.Subject] = append(snap.roles[g.Subject], g)
			if snap.holds[g.Subject] == nil {
				snap.holds[g.Subject] = map[string]bool{}
			}
			snap.holds[g.Subject][g.Role] = true
			if w, ok := g.Domain.Ward(); ok && g.Domain == WardDomain(w) {
				snap.wardNames[w] = string(g.Domain) // canonical only: the same string as WardDomain
			}
			if _, ok := snap.roleBit[g.Role]; !ok {
				if len(snap.roleBit) < 64 {
					snap.roleBit[g.Role] = 1 << len(snap.roleBit)
				} else {
					snap.noProfile = true
				}
			}
			return nil
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT id, user_id, patient_id, expires_at FROM auth_break_glass
			WHERE closed_at IS NULL AND expires_at > $1`, e.now())
		if err != nil {
			return err
		}
		var id, user, patient uuid.UUID
		var exp time.Time
		_, err = pgx.ForEachRow(rows, []any{&id, &user, &patient, &exp}, func() error {
			sub := UserSubject(user)
			if snap.glass[sub] == nil {
				snap.glass[sub] = map[uuid.UUID][]grantRef{}
			}
			snap.glass[sub][patient] = append(snap.glass[sub][patient], grantRef{id, exp})
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("auth: load policy: %w", err)
	}
	holds := func(args ...any) (any, error) {
		if len(args) != 2 {
			return false, errors.New("holds(subject, role)")
		}
		sub, _ := args[0].(string)
		role, _ := args[1].(string)
		return snap.holds[sub][role], nil
	}
	snap.e.AddFunction("holds", holds)
	if err := snap.index(holds); err != nil {
		return fmt.Errorf("auth: load policy: %w", err)
	}
	e.cur.Store(snap)
	return nil
}

// index splits the rules by (object, action) into enforcers that share the full enforcer's
// role manager (the grants), so that a decision evaluates the matcher over the few rules of
// its permission rather than over the whole policy. The model and every decision stay
// Casbin's; only the rules a request cannot match are left out.
func (s *snapshot) index(holds func(args ...any) (any, error)) error {
	pol, err := s.e.GetPolicy()
	if err != nil {
		return err
	}
	groups := map[string][][]string{}
	for _, p := range pol {
		groups[p[1]+"\x00"+p[2]] = append(groups[p[1]+"\x00"+p[2]], p)
	}
	rm := s.e.GetModel()["g"]["g"].RM
	s.byPerm = make(map[string]*casbin.Enforcer, len(groups))
	for key, lines := range groups {
		obj, act, _ := strings.Cut(key, "\x00")
		if act != "*" {
			lines = append(slices.Clip(lines), groups[obj+"\x00*"]...)
		}
		m, err := model.NewModelFromString(modelText)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if err := m.AddPolicy("p", "p", l); err != nil {
				return err
			}
		}
		se, err := casbin.NewEnforcer(m)
		if err != nil {
			return err
		}
		se.EnableAutoSave(false)
		se.GetModel()["g"]["g"].RM = rm
		se.AddFunction("holds", holds)
		s.byPerm[key] = se
	}
	return nil
}

// enforcer returns the enforcer holding the rules for (obj, act).
func (s *snapshot) enforcer(obj, act string) *casbin.Enforcer {
	if se := s.byPerm[obj+"\x00"+act]; se != nil {
		return se
	}
	if se := s.byPerm[obj+"\x00*"]; se != nil {
		return se
	}
	return s.e
}

// addBreakGlass makes a new grant effective: a copy of the current snapshot with the grant
// (break-glass grants live beside Casbin's rules, not in them) at the change's version. If
// another change came in between (the version is not the next one), the policy is reloaded.
func (e *Enforcer) addBreakGlass(ctx context.Context, version int64, g BreakGlassGrant) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	cur := e.cur.Load()
	if version != cur.version+1 {
		return e.reloadLocked(ctx)
	}
	next := &snapshot{version: version, e: cur.e, byPerm: cur.byPerm, roles: cur.roles, holds: cur.holds,
		roleBit: cur.roleBit, noProfile: cur.noProfile, wardNames: cur.wardNames,
		glass: make(map[string]map[uuid.UUID][]grantRef, len(cur.glass)+1), memo: map[memoKey]memoVal{}}
	for sub, m := range cur.glass {
		next.glass[sub] = m
	}
	sub := UserSubject(g.UserID)
	pm := make(map[uuid.UUID][]grantRef, len(cur.glass[sub])+1)
	for p, gs := range cur.glass[sub] {
		pm[p] = gs
	}
	pm[g.PatientID] = append(slices.Clone(pm[g.PatientID]), grantRef{g.ID, g.ExpiresAt})
	next.glass[sub] = pm
	e.cur.Store(next)
	return nil
}

// Refresh reloads the policy if another process changed it (its version moved). Cheap: one
// indexed read when nothing changed. A server calls it periodically.
func (e *Enforcer) Refresh(ctx context.Context) error {
	var v int64
	if err := e.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM auth_policy_versions").Scan(&v); err != nil {
		return fmt.Errorf("auth: policy version: %w", err)
	}
	if v == e.cur.Load().version {
		return nil
	}
	return e.Reload(ctx)
}

// Version is the loaded policy version.
func (e *Enforcer) Version() int64 { return e.cur.Load().version }

// UserSubject is the policy subject of a user.
func UserSubject(id uuid.UUID) string { return "user:" + id.String() }

// ServiceSubject is the policy subject of a service account (the upper bound of its tokens).
func ServiceSubject(id uuid.UUID) string { return "svc:" + id.String() }

// TokenSubject is the policy subject of an API token (its own, narrower grants).
func TokenSubject(id uuid.UUID) string { return "token:" + id.String() }

// Allow decides whether p may do action on t. It returns the decision, and ErrForbidden when
// denied. A nil principal is denied.
func (e *Enforcer) Allow(p *Principal, action string, t Target) (Decision, error) {
	if p == nil {
		return Decision{}, fail(ErrUnauthenticated, "no_principal")
	}
	cid := "" // the care-team fact needs the id as a string: only made when there is a care team
	if t.Patient != uuid.Nil && len(t.CareTeam) > 0 {
		cid = p.ID.String()
	}
	d, err := e.decide(e.cur.Load(), p.Subject, cid, action, t)
	if err != nil {
		return d, err
	}
	if !d.Allowed {
		return d, ErrForbidden
	}
	return d, nil
}

// Decide answers for a policy subject ("user:<id>", "token:<id>"); Allow is the form the
// server uses. clinicianID is the id care teams list the subject under (the user id).
func (e *Enforcer) Decide(subject, clinicianID, action string, t Target) (Decision, error) {
	return e.decide(e.cur.Load(), subject, clinicianID, action, t)
}

func (e *Enforcer) decide(s *snapshot, sub, clinicianID, action string, t Target) (Decision, error) {
	d := Decision{Subject: sub, Version: s.version}
	ward := ""
	if t.Ward != uuid.Nil {
		if ward = s.wardNames[t.Ward]; ward == "" {
			ward = string(WardDomain(t.Ward))
		}
	}
	careTeam := t.Patient != uuid.Nil && clinicianID != "" && slices.Contains(t.CareTeam, clinicianID)
	ce := s.enforcer(t.Object, action)
	ok, expl, err := s.enforceMemo(ce, sub, ward, t.Object, action, careTeam, false)
	if err != nil {
		return d, fmt.Errorf("auth: enforce: %w", err)
	}
	if !ok && t.Patient != uuid.Nil {
		if g, has := s.activeGrant(sub, t.Patient, e.now()); has {
			ok, expl, err = s.enforceMemo(ce, sub, ward, t.Object, action, careTeam, true)
			if err != nil {
				return d, fmt.Errorf("auth: enforce: %w", err)
			}
			if ok {
				d.BreakGlass = g
			}
		}
	}
	d.Allowed = ok
	if ok && len(expl) == 4 {
		d.Rule = &Rule{Role: expl[0], Object: expl[1], Action: expl[2], Scope: expl[3]}
		d.Basis = expl[3]
	}
	if d.Basis != ScopeBreakGlass {
		d.BreakGlass = uuid.Nil
	}
	return d, nil
}

func (s *snapshot) activeGrant(sub string, patient uuid.UUID, now time.Time) (uuid.UUID, bool) {
	for _, g := range s.glass[sub][patient] {
		if now.Before(g.expires) {
			return g.id, true
		}
	}
	return uuid.Nil, false
}

// Visibility returns the filter of the patients p may read (object patient, action read), for
// domain queries to apply in SQL. Every part of it is a decision of the enforcer.
func (e *Enforcer) Visibility(p *Principal) (visibility.Filter, error) {
	if p == nil {
		return visibility.Filter{}, nil
	}
	return e.visibility(e.cur.Load(), p.Subject, p.ID.String())
}

func (e *Enforcer) visibility(s *snapshot, sub, clinicianID string) (visibility.Filter, error) {
	var f visibility.Filter
	ce := s.enforcer(ObjPatient, "read")
	ask := func(ward string, careTeam, glass bool) (bool, error) {
		ok, _, err := s.enforceMemo(ce, sub, ward, ObjPatient, "read", careTeam, glass)
		if err != nil {
			return false, fmt.Errorf("auth: enforce: %w", err)
		}
		return ok, nil
	}
	var err error
	if f.All, err = ask("*", false, false); err != nil || f.All {
		return f, err
	}
	seen := map[Domain]bool{}
	for _, g := range s.roles[sub] {
		w, isWard := g.Domain.Ward()
		if !isWard || seen[g.Domain] {
			continue
		}
		seen[g.Domain] = true
		ok, err := ask(string(g.Domain), false, false)
		if err != nil {
			return f, err
		}
		if ok {
			f.Wards = append(f.Wards, w)
		}
	}
	ok, err := ask("", true, false)
	if err != nil {
		return f, err
	}
	if ok && clinicianID != "" {
		f.CareTeamMember = clinicianID
	}
	now := e.now()
	for patient := range s.glass[sub] {
		if _, active := s.activeGrant(sub, patient, now); !active {
			continue
		}
		ok, err := ask("", false, true)
		if err != nil {
			return f, err
		}
		if ok {
			f.Patients = append(f.Patients, patient)
		}
	}
	slices.SortFunc(f.Patients, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return f, nil
}

// RolesOf returns the role grants of a policy subject in the loaded policy.
func (e *Enforcer) RolesOf(subject string) []RoleGrant {
	return slices.Clone(e.cur.Load().roles[subject])
}

// holdsAny reports whether subject holds any of roles in some domain.
func (e *Enforcer) holdsAny(subject string, roles func(RoleInfo) bool) bool {
	for role := range e.cur.Load().holds[subject] {
		if ri, ok := LookupRole(role); ok && roles(ri) {
			return true
		}
	}
	return false
}

// Explanation is a decision with everything that went into it, for `vigil policy test`.
type Explanation struct {
	Decision   Decision    `json:"decision"`
	Target     Target      `json:"target"`
	Action     string      `json:"action"`
	Roles      []RoleGrant `json:"roles"`
	CareTeam   bool        `json:"care_team"`
	BreakGlass []uuid.UUID `json:"break_glass_grants,omitempty"`
	Candidates []Rule      `json:"candidate_rules"` // policy lines for this object and action
}

// Explain decides like Decide and says why: the subject's roles, whether the care-team and
// break-glass facts held, and every policy line for the object and action.
func (e *Enforcer) Explain(subject, clinicianID, action string, t Target) (Explanation, error) {
	s := e.cur.Load()
	d, err := e.decide(s, subject, clinicianID, action, t)
	if err != nil {
		return Explanation{}, err
	}
	x := Explanation{Decision: d, Target: t, Action: action, Roles: slices.Clone(s.roles[subject]),
		CareTeam: t.Patient != uuid.Nil && clinicianID != "" && slices.Contains(t.CareTeam, clinicianID)}
	now := e.now()
	for _, g := range s.glass[subject][t.Patient] {
		if now.Before(g.expires) {
			x.BreakGlass = append(x.BreakGlass, g.id)
		}
	}
	pol, err := s.e.GetPolicy()
	if err != nil {
		return x, err
	}
	for _, p := range pol {
		if len(p) == 4 && p[1] == t.Object && (p[2] == action || p[2] == "*") {
			x.Candidates = append(x.Candidates, Rule{p[0], p[1], p[2], p[3]})
		}
	}
	return x, nil
}
