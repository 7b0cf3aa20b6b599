package auth

import (
	"errors"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/google/uuid"
)

// grantTable is the grants of Vigil's model, behind its g function: a flat table of (subject,
// role, domain) grants with no role hierarchy and no pattern matching, which is all the model
// uses ("g, <subject>, <role>, <domain>"). g is a map lookup and a scan of the subject's few
// grants, without allocation, where Casbin's default role manager walks a hierarchy under a
// mutex and allocates for unknown names: with 10,000 users that was most of a decision's time.
//
// It is installed as the function g of every Casbin enforcer, not as Casbin's role manager:
// Casbin compiles the matcher once per enforcer with the g function of its first decision,
// which remembers the role manager's answers for the enforcer's life; this g answers from the
// current grant state instead (an immutable grantState, swapped atomically by the Enforcer
// when a grant changes). So the Casbin enforcers of the policy lines are built once per set of
// lines and shared by every policy version with those lines, and a grant or a revocation costs
// a new grant state, not a new policy. A decision checks after asking Casbin that the state it
// asked with is still the one of its snapshot (Enforcer.enforceMemo), so an answer is never a
// mix of two versions. Grants never change through Casbin's own API.
type grantTable struct {
	cur atomic.Pointer[grantState]
}

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

// g is the model's g(subject, role, domain): subject holds role in the domain (or is role).
func (g *grantTable) g(args ...any) (any, error) {
	if len(args) != 3 {
		return false, errors.New("g(subject, role, domain)")
	}
	name1, _ := args[0].(string)
	name2, _ := args[1].(string)
	d, _ := args[2].(string)
	return g.hasLink(name1, name2, d), nil
}

// hasLink reports whether name1 holds role name2 in domain d (or is name2).
func (g *grantTable) hasLink(name1, name2, d string) bool {
	if name1 == name2 {
		return true
	}
	for _, x := range g.state().of(name1) {
		if x.Role == name2 && string(x.Domain) == d {
			return true
		}
	}
	return false
}
