package auth

import (
	"errors"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/casbin/casbin/v2/log"
	"github.com/casbin/casbin/v2/rbac"
	"github.com/google/uuid"
)

// grantTable is the Casbin role manager of Vigil's model: a flat table of (subject, role,
// domain) grants with no role hierarchy and no pattern matching, which is all the model uses
// ("g, <subject>, <role>, <domain>"). HasLink is a map lookup and a scan of the subject's few
// grants, without allocation, where Casbin's default manager walks a hierarchy under a mutex
// and allocates for unknown names: with 10,000 users that was most of a decision's time.
//
// The table answers from the current grant state (an immutable grantState, swapped atomically
// by the Enforcer when a grant changes): the Casbin enforcers of the policy lines are built
// once per set of lines and shared by every policy version with those lines, so a grant or a
// revocation costs a new grant state, not a new policy. A decision checks after asking Casbin
// that the state it asked with is still the one of its snapshot (Enforcer.consistent), so an
// answer is never a mix of two versions. Grants never change through Casbin's own API.
type grantTable struct {
	cur atomic.Pointer[grantState]
}

var _ rbac.RoleManager = (*grantTable)(nil)

var errGrantsReadOnly = errors.New("auth: role grants change through auth.Service (versioned, audited)")

// overlayMax bounds the subjects changed since a grant state's base: beyond it the next change
// folds them into a new base (one copy of the table per overlayMax changes).
const overlayMax = 256

// grantState is the role grants of one policy version. Immutable once published: a change
// makes a new state that shares the base and copies the (small) overlay.
type grantState struct {
	base map[string][]RoleGrant // subject → grants
	over map[string][]RoleGrant // subjects changed since base (an empty slice: none left)

	// roleBit numbers the roles granted (at most 64), for decision profiles; noProfile is set
	// when there are more (then answers are remembered per subject). A role keeps its bit in
	// every later state, so that remembered answers stay valid across grant changes.
	roleBit   map[string]uint64
	noProfile bool
	// wardNames are the domain names ("ward:<id>") of the wards roles are held in, made once.
	wardNames map[uuid.UUID]string
}

func newGrantState() *grantState {
	return &grantState{base: map[string][]RoleGrant{}, roleBit: map[string]uint64{}, wardNames: map[uuid.UUID]string{}}
}

// of returns the grants of a subject.
func (g *grantState) of(sub string) []RoleGrant {
	if gs, ok := g.over[sub]; ok {
		return gs
	}
	return g.base[sub]
}

// holds reports whether sub holds role in some domain.
func (g *grantState) holds(sub, role string) bool {
	for _, x := range g.of(sub) {
		if x.Role == role {
			return true
		}
	}
	return false
}

// note records what a grant adds to the lookup tables (role bit, ward name). Only while the
// state is being built.
func (g *grantState) note(x RoleGrant) {
	if w, ok := x.Domain.Ward(); ok && x.Domain == WardDomain(w) {
		if _, seen := g.wardNames[w]; !seen {
			g.wardNames[w] = string(x.Domain) // canonical only: the same string as WardDomain
		}
	}
	if _, ok := g.roleBit[x.Role]; !ok {
		if len(g.roleBit) < 64 {
			g.roleBit[x.Role] = 1 << len(g.roleBit)
		} else {
			g.noProfile = true
		}
	}
}

// with returns a new state: g with the grants added and revoked applied. Its cost is that of
// the overlay (at most overlayMax subjects), plus a copy of the table once per overlayMax
// changes; it does not depend on the number of grants otherwise.
func (g *grantState) with(added, revoked []RoleGrant) *grantState {
	n := &grantState{base: g.base, over: make(map[string][]RoleGrant, len(g.over)+len(added)+len(revoked)),
		roleBit: g.roleBit, noProfile: g.noProfile, wardNames: g.wardNames}
	maps.Copy(n.over, g.over)
	for _, x := range revoked {
		n.over[x.Subject] = slices.DeleteFunc(slices.Clone(n.of(x.Subject)), func(y RoleGrant) bool {
			return y.Role == x.Role && y.Domain == x.Domain
		})
	}
	newWard, newRole := false, false
	for _, x := range added {
		cur := n.of(x.Subject)
		if slices.ContainsFunc(cur, func(y RoleGrant) bool { return y.Role == x.Role && y.Domain == x.Domain }) {
			continue
		}
		n.over[x.Subject] = append(slices.Clip(cur), x)
		if w, ok := x.Domain.Ward(); ok && x.Domain == WardDomain(w) && n.wardNames[w] == "" {
			newWard = true
		}
		if _, ok := n.roleBit[x.Role]; !ok {
			newRole = true
		}
	}
	if newWard || newRole {
		n.wardNames, n.roleBit = maps.Clone(n.wardNames), maps.Clone(n.roleBit)
		for _, x := range added {
			n.note(x)
		}
	}
	if len(n.over) > overlayMax {
		base := maps.Clone(n.base)
		for sub, gs := range n.over {
			if len(gs) == 0 {
				delete(base, sub)
			} else {
				base[sub] = gs
			}
		}
		n.base, n.over = base, nil
	}
	return n
}

func (g *grantTable) state() *grantState { return g.cur.Load() }

func (g *grantTable) Clear() error                               { return errGrantsReadOnly }
func (g *grantTable) AddLink(string, string, ...string) error    { return errGrantsReadOnly }
func (g *grantTable) DeleteLink(string, string, ...string) error { return errGrantsReadOnly }
func (g *grantTable) BuildRelationship(string, string, ...string) error {
	return errGrantsReadOnly
}

func dom(domain []string) string {
	if len(domain) == 0 {
		return ""
	}
	return domain[0]
}

// HasLink reports whether name1 holds role name2 in the domain (or is name2).
func (g *grantTable) HasLink(name1, name2 string, domain ...string) (bool, error) {
	if name1 == name2 {
		return true, nil
	}
	d := dom(domain)
	for _, x := range g.state().of(name1) {
		if x.Role == name2 && string(x.Domain) == d {
			return true, nil
		}
	}
	return false, nil
}

// each calls fn with every grant of the current state.
func (g *grantTable) each(fn func(RoleGrant)) {
	st := g.state()
	for sub, gs := range st.base {
		if _, changed := st.over[sub]; !changed {
			for _, x := range gs {
				fn(x)
			}
		}
	}
	for _, gs := range st.over {
		for _, x := range gs {
			fn(x)
		}
	}
}

func sortedSet(m map[string]bool) []string {
	out := slices.Collect(maps.Keys(m))
	slices.Sort(out)
	return out
}

func (g *grantTable) GetRoles(name string, domain ...string) ([]string, error) {
	out := map[string]bool{}
	for _, x := range g.state().of(name) {
		if string(x.Domain) == dom(domain) {
			out[x.Role] = true
		}
	}
	return sortedSet(out), nil
}

func (g *grantTable) GetUsers(name string, domain ...string) ([]string, error) {
	out := map[string]bool{}
	g.each(func(x RoleGrant) {
		if x.Role == name && string(x.Domain) == dom(domain) {
			out[x.Subject] = true
		}
	})
	return sortedSet(out), nil
}

func (g *grantTable) GetImplicitRoles(name string, domain ...string) ([]string, error) {
	return g.GetRoles(name, domain...)
}

func (g *grantTable) GetImplicitUsers(name string, domain ...string) ([]string, error) {
	return g.GetUsers(name, domain...)
}

func (g *grantTable) GetDomains(name string) ([]string, error) {
	out := map[string]bool{}
	for _, x := range g.state().of(name) {
		out[string(x.Domain)] = true
	}
	return sortedSet(out), nil
}

func (g *grantTable) GetAllDomains() ([]string, error) {
	out := map[string]bool{}
	g.each(func(x RoleGrant) { out[string(x.Domain)] = true })
	return sortedSet(out), nil
}

func (g *grantTable) PrintRoles() error                               { return nil }
func (g *grantTable) SetLogger(log.Logger)                            {}
func (g *grantTable) Match(str, pattern string) bool                  { return str == pattern }
func (g *grantTable) AddMatchingFunc(string, rbac.MatchingFunc)       {}
func (g *grantTable) AddDomainMatchingFunc(string, rbac.MatchingFunc) {}
func (g *grantTable) DeleteDomain(string) error                       { return errGrantsReadOnly }
