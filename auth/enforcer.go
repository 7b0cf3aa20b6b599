package auth

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
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
// PostgreSQL plus the active break-glass grants. It answers from memory. A change made through
// this process's Service is applied to it incrementally once committed (apply: a grant or a
// revocation swaps in a new grant state, a policy line rebuilds only the rules' enforcers);
// changes made by another process arrive as PostgreSQL notifications (Follow), with Refresh
// (a reload when the version moved) as the periodic fallback. Every change makes a new policy
// version, swapped in atomically. Safe for concurrent use.
type Enforcer struct {
	pool   *pgxpool.Pool
	now    func() time.Time
	loadMu sync.Mutex
	cur    atomic.Pointer[snapshot]
	// rm is the grants of every Casbin enforcer this Enforcer builds (the model's g and
	// holds): it answers from the grant state of the current snapshot.
	rm grantTable
	// applied counts the changes applied incrementally and reloads counts full reloads
	// (Stats; tests).
	applied, reloads atomic.Int64
	// watch is the open streams' watchers of access changes (WatchAccess).
	watch accessWatch
	// follow is what the notification listener hands Follow (notify.go).
	follow followState
}

type grantRef struct {
	id      uuid.UUID
	expires time.Time
}

// snapshot is one loaded policy version.
type snapshot struct {
	version int64
	rules   *ruleSet                            // the policy lines and their Casbin enforcers
	grants  *grantState                         // the role grants (the role manager's state)
	glass   map[string]map[uuid.UUID][]grantRef // subject → patient → break-glass grants
	memo    *memo                               // shared by the versions with the same rules
}

// ruleSet is the policy lines (p) of a version, with their Casbin enforcers. Shared by every
// version with the same lines: a grant change keeps it.
type ruleSet struct {
	lines  [][]string                  // role, object, action, scope; in load order
	e      *casbin.Enforcer            // every rule: explanations, permissions with no rule
	byPerm map[string]*casbin.Enforcer // "<object>\x00<action>" → the rules for it only
}

// memo remembers Casbin's answers. The model's matcher sees the subject only through
// g(subject, role, "*"), g(subject, role, ward) and holds(subject, role): so an answer depends
// only on the subject's profile for the question — the roles it holds for every ward, in the
// target's ward, and anywhere — and on the object, the action and the two facts (care team,
// break-glass). Thousands of users share a few dozen profiles, so a question asked for the
// first time by one user is mostly answered from what Casbin said for another of the same
// profile. Because an answer depends on the profile and not on who holds it, the memo stays
// valid when grants change (it is kept) and is replaced when the rules change. Bounded:
// cleared when full.
type memo struct {
	mu sync.RWMutex
	m  map[memoKey]memoVal
}

func newMemo() *memo { return &memo{m: map[memoKey]memoVal{}} }

// memoKey is a question as the matcher sees it: the subject's role profile (or, without
// profiles, the subject and ward themselves), the object, the action and the facts.
type memoKey struct {
	star, inWard, held  uint64
	sub, ward, obj, act string
	careTeam, glass     bool
}

// key returns the memo key of a question.
func (s *snapshot) key(sub, ward, obj, act string, careTeam, glass bool) memoKey {
	g := s.grants
	if g.noProfile || g.roleBit[sub] != 0 {
		// A subject named like a role matches it by name (HasLink): no profile for it.
		return memoKey{sub: sub, ward: ward, obj: obj, act: act, careTeam: careTeam, glass: glass}
	}
	k := memoKey{obj: obj, act: act, careTeam: careTeam, glass: glass}
	for _, x := range g.of(sub) {
		bit := g.roleBit[x.Role]
		k.held |= bit
		if x.Domain == AllDomains {
			k.star |= bit
		}
		if string(x.Domain) == ward {
			k.inWard |= bit
		}
	}
	return k
}

type memoVal struct {
	ok   bool
	expl []string
}

// memoMax bounds the decisions remembered (≈ 100 bytes each).
const memoMax = 200_000

// errInconsistent says that the grants changed while Casbin answered: ask again.
var errInconsistent = errors.New("auth: grants changed during the decision")

// enforceMemo answers the question (sub, ward, obj, act, careTeam, glass) with ce, from the
// memo when a subject of the same profile asked it before. It returns errInconsistent when the
// role manager's state moved on from the snapshot's while Casbin answered (the caller asks
// again with the new snapshot): such an answer is neither remembered nor used.
func (e *Enforcer) enforceMemo(s *snapshot, ce *casbin.Enforcer, sub, ward, obj, act string, careTeam, glass bool) (bool, []string, error) {
	k := s.key(sub, ward, obj, act, careTeam, glass)
	s.memo.mu.RLock()
	v, hit := s.memo.m[k]
	s.memo.mu.RUnlock()
	if hit {
		return v.ok, v.expl, nil
	}
	if e.rm.state() != s.grants {
		return false, nil, errInconsistent
	}
	ok, expl, err := ce.EnforceEx(sub, ward, obj, act, careTeam, glass)
	if err != nil {
		return false, nil, err
	}
	if e.rm.state() != s.grants {
		return false, nil, errInconsistent
	}
	s.memo.mu.Lock()
	if len(s.memo.m) >= memoMax {
		clear(s.memo.m)
	}
	s.memo.m[k] = memoVal{ok, expl}
	s.memo.mu.Unlock()
	return ok, expl, nil
}

// consistently runs f with the current snapshot until it answers with the grants of that
// snapshot (a grant change swaps the role manager's state and the snapshot one after the
// other: a decision that straddled them is asked again).
func consistently[T any](e *Enforcer, f func(*snapshot) (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := f(e.cur.Load())
		if !errors.Is(err, errInconsistent) {
			return v, err
		}
		if i > 2 {
			runtime.Gosched()
		}
	}
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

// Reload loads the current policy version and the active break-glass grants from the
// database.
func (e *Enforcer) Reload(ctx context.Context) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	return e.reloadLocked(ctx)
}

func (e *Enforcer) reloadLocked(ctx context.Context) error {
	snap := &snapshot{grants: newGrantState(), glass: map[string]map[uuid.UUID][]grantRef{}, memo: newMemo()}
	var lines [][]string
	err := pgx.BeginTxFunc(ctx, e.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM auth_policy_versions").Scan(&snap.version); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "SELECT ptype, v0, v1, v2, v3, source FROM auth_policy_rules ORDER BY id")
		if err != nil {
			return err
		}
		var pt, v0, v1, v2, v3, source string
		g := snap.grants
		if _, err := pgx.ForEachRow(rows, []any{&pt, &v0, &v1, &v2, &v3, &source}, func() error {
			if pt == "p" {
				lines = append(lines, []string{v0, v1, v2, v3})
				return nil
			}
			x := RoleGrant{Subject: v0, Role: v1, Domain: Domain(v2), Source: source}
			g.base[x.Subject] = append(g.base[x.Subject], x)
			g.note(x)
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
	if snap.rules, err = e.buildRules(lines); err != nil {
		return fmt.Errorf("auth: load policy: %w", err)
	}
	prev := e.cur.Load()
	e.publish(snap)
	e.reloads.Add(1)
	if prev != nil && prev.version != snap.version {
		e.accessChanged(true) // what changed is not known: everyone checks again
	}
	return nil
}

// publish makes snap the current version: the role manager's state first, then the snapshot
// (a decision that sees the one without the other asks again: consistently).
func (e *Enforcer) publish(snap *snapshot) {
	e.rm.cur.Store(snap.grants)
	e.cur.Store(snap)
}

// holds is the model's holds(subject, role): the subject holds the role in some domain.
func (e *Enforcer) holds(args ...any) (any, error) {
	if len(args) != 2 {
		return false, errors.New("holds(subject, role)")
	}
	sub, _ := args[0].(string)
	role, _ := args[1].(string)
	return e.rm.state().holds(sub, role), nil
}

// buildRules makes the Casbin enforcers of the policy lines: one over every line, and the
// lines split by (object, action) into enforcers that share the grants (the model's g), so
// that a decision evaluates the matcher over the few rules of its permission rather than over
// the whole policy. The model and every decision stay Casbin's; only the rules a request
// cannot match are left out. Its cost depends on the policy lines only, not on the grants.
func (e *Enforcer) buildRules(lines [][]string) (*ruleSet, error) {
	rs := &ruleSet{lines: lines}
	newCasbin := func(lines [][]string) (*casbin.Enforcer, error) {
		m, err := model.NewModelFromString(modelText)
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if err := m.AddPolicy("p", "p", l); err != nil {
				return nil, err
			}
		}
		ce, err := casbin.NewEnforcer(m)
		if err != nil {
			return nil, err
		}
		ce.EnableAutoSave(false)
		// g is a function of the model over the live grants (grantTable), not a role
		// manager: Casbin would remember a role manager's answers in the compiled matcher.
		ce.GetModel()["g"]["g"].RM = nil
		ce.AddFunction("g", e.rm.g)
		ce.AddFunction("holds", e.holds)
		return ce, nil
	}
	var err error
	if rs.e, err = newCasbin(lines); err != nil {
		return nil, err
	}
	groups := map[string][][]string{}
	for _, p := range lines {
		groups[p[1]+"\x00"+p[2]] = append(groups[p[1]+"\x00"+p[2]], p)
	}
	rs.byPerm = make(map[string]*casbin.Enforcer, len(groups))
	for key, ls := range groups {
		obj, act, _ := strings.Cut(key, "\x00")
		if act != "*" {
			ls = append(slices.Clip(ls), groups[obj+"\x00*"]...)
		}
		if rs.byPerm[key], err = newCasbin(ls); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// enforcer returns the enforcer holding the rules for (obj, act).
func (s *snapshot) enforcer(obj, act string) *casbin.Enforcer {
	if se := s.rules.byPerm[obj+"\x00"+act]; se != nil {
		return se
	}
	if se := s.rules.byPerm[obj+"\x00*"]; se != nil {
		return se
	}
	return s.rules.e
}

// Stats counts how the enforcer's versions were loaded.
type Stats struct {
	Version int64 `json:"version"`
	Applied int64 `json:"applied"` // changes applied incrementally (here or notified by another process)
	Reloads int64 `json:"reloads"` // full reloads from the database
}

// Stats returns the enforcer's counters.
func (e *Enforcer) Stats() Stats {
	return Stats{Version: e.Version(), Applied: e.applied.Load(), Reloads: e.reloads.Load()}
}

// Refresh reloads the policy if another process changed it (its version moved). Cheap: one
// indexed read when nothing changed. Follow calls it periodically (the fallback for a missed
// notification) and whenever its listener (re)connects.
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
	d, err := consistently(e, func(s *snapshot) (Decision, error) { return e.decide(s, p.Subject, cid, action, t) })
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
	return consistently(e, func(s *snapshot) (Decision, error) { return e.decide(s, subject, clinicianID, action, t) })
}

func (e *Enforcer) decide(s *snapshot, sub, clinicianID, action string, t Target) (Decision, error) {
	d := Decision{Subject: sub, Version: s.version}
	ward := ""
	if t.Ward != uuid.Nil {
		if ward = s.grants.wardNames[t.Ward]; ward == "" {
			ward = string(WardDomain(t.Ward))
		}
	}
	careTeam := t.Patient != uuid.Nil && clinicianID != "" && slices.Contains(t.CareTeam, clinicianID)
	ce := s.enforcer(t.Object, action)
	ok, expl, err := e.enforceMemo(s, ce, sub, ward, t.Object, action, careTeam, false)
	if err != nil {
		return d, wrapEnforce(err)
	}
	if !ok && t.Patient != uuid.Nil {
		if g, has := s.activeGrant(sub, t.Patient, e.now()); has {
			ok, expl, err = e.enforceMemo(s, ce, sub, ward, t.Object, action, careTeam, true)
			if err != nil {
				return d, wrapEnforce(err)
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
	return consistently(e, func(s *snapshot) (visibility.Filter, error) { return e.visibility(s, p.Subject, p.ID.String()) })
}

func (e *Enforcer) visibility(s *snapshot, sub, clinicianID string) (visibility.Filter, error) {
	var f visibility.Filter
	ce := s.enforcer(ObjPatient, "read")
	ask := func(ward string, careTeam, glass bool) (bool, error) {
		ok, _, err := e.enforceMemo(s, ce, sub, ward, ObjPatient, "read", careTeam, glass)
		if err != nil {
			return false, wrapEnforce(err)
		}
		return ok, nil
	}
	var err error
	if f.All, err = ask("*", false, false); err != nil || f.All {
		return f, err
	}
	seen := map[Domain]bool{}
	for _, g := range s.grants.of(sub) {
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

// wrapEnforce wraps a failure of Casbin (errInconsistent passes unwrapped: it is retried).
func wrapEnforce(err error) error {
	if errors.Is(err, errInconsistent) {
		return err
	}
	return fmt.Errorf("auth: enforce: %w", err)
}

// RolesOf returns the role grants of a policy subject in the loaded policy.
func (e *Enforcer) RolesOf(subject string) []RoleGrant {
	return slices.Clone(e.cur.Load().grants.of(subject))
}

// holdsAny reports whether subject holds any of roles in some domain.
func (e *Enforcer) holdsAny(subject string, roles func(RoleInfo) bool) bool {
	for _, g := range e.cur.Load().grants.of(subject) {
		if ri, ok := LookupRole(g.Role); ok && roles(ri) {
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
	var s *snapshot
	d, err := consistently(e, func(snap *snapshot) (Decision, error) {
		s = snap
		return e.decide(snap, subject, clinicianID, action, t)
	})
	if err != nil {
		return Explanation{}, err
	}
	x := Explanation{Decision: d, Target: t, Action: action, Roles: slices.Clone(s.grants.of(subject)),
		CareTeam: t.Patient != uuid.Nil && clinicianID != "" && slices.Contains(t.CareTeam, clinicianID)}
	now := e.now()
	for _, g := range s.glass[subject][t.Patient] {
		if now.Before(g.expires) {
			x.BreakGlass = append(x.BreakGlass, g.id)
		}
	}
	for _, p := range s.rules.lines {
		if len(p) == 4 && p[1] == t.Object && (p[2] == action || p[2] == "*") {
			x.Candidates = append(x.Candidates, Rule{p[0], p[1], p[2], p[3]})
		}
	}
	return x, nil
}
