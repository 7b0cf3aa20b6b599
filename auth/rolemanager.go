package auth

import (
	"slices"
	"sync"

	"github.com/casbin/casbin/v2/log"
	"github.com/casbin/casbin/v2/rbac"
)

// grantTable is the Casbin role manager of Vigil's model: a flat table of (subject, role,
// domain) grants with no role hierarchy and no pattern matching, which is all the model uses
// ("g, <subject>, <role>, <domain>"). HasLink is two map lookups without allocation, where
// Casbin's default manager walks a hierarchy under a mutex and allocates for unknown names:
// with 10,000 users that was most of a decision's time. It is filled while a policy version
// loads and only read afterwards (the snapshot is replaced, never changed).
type grantTable struct {
	mu     sync.RWMutex
	grants map[string]map[string]map[string]bool // domain → subject → role → held
}

var _ rbac.RoleManager = (*grantTable)(nil)

func newGrantTable() *grantTable { return &grantTable{grants: map[string]map[string]map[string]bool{}} }

func dom(domain []string) string {
	if len(domain) == 0 {
		return ""
	}
	return domain[0]
}

func (g *grantTable) Clear() error {
	g.mu.Lock()
	g.grants = map[string]map[string]map[string]bool{}
	g.mu.Unlock()
	return nil
}

func (g *grantTable) AddLink(name1, name2 string, domain ...string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := dom(domain)
	if g.grants[d] == nil {
		g.grants[d] = map[string]map[string]bool{}
	}
	if g.grants[d][name1] == nil {
		g.grants[d][name1] = map[string]bool{}
	}
	g.grants[d][name1][name2] = true
	return nil
}

func (g *grantTable) BuildRelationship(name1, name2 string, domain ...string) error {
	return g.AddLink(name1, name2, domain...)
}

func (g *grantTable) DeleteLink(name1, name2 string, domain ...string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.grants[dom(domain)][name1], name2)
	return nil
}

// HasLink reports whether name1 holds role name2 in the domain (or is name2).
func (g *grantTable) HasLink(name1, name2 string, domain ...string) (bool, error) {
	if name1 == name2 {
		return true, nil
	}
	g.mu.RLock()
	ok := g.grants[dom(domain)][name1][name2]
	g.mu.RUnlock()
	return ok, nil
}

func (g *grantTable) GetRoles(name string, domain ...string) ([]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []string
	for r := range g.grants[dom(domain)][name] {
		out = append(out, r)
	}
	slices.Sort(out)
	return out, nil
}

func (g *grantTable) GetUsers(name string, domain ...string) ([]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []string
	for u, roles := range g.grants[dom(domain)] {
		if roles[name] {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (g *grantTable) GetImplicitRoles(name string, domain ...string) ([]string, error) {
	return g.GetRoles(name, domain...)
}

func (g *grantTable) GetImplicitUsers(name string, domain ...string) ([]string, error) {
	return g.GetUsers(name, domain...)
}

func (g *grantTable) GetDomains(name string) ([]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []string
	for d, subs := range g.grants {
		if len(subs[name]) > 0 {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (g *grantTable) GetAllDomains() ([]string, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []string
	for d := range g.grants {
		out = append(out, d)
	}
	slices.Sort(out)
	return out, nil
}

func (g *grantTable) PrintRoles() error                               { return nil }
func (g *grantTable) SetLogger(log.Logger)                            {}
func (g *grantTable) Match(str, pattern string) bool                  { return str == pattern }
func (g *grantTable) AddMatchingFunc(string, rbac.MatchingFunc)       {}
func (g *grantTable) AddDomainMatchingFunc(string, rbac.MatchingFunc) {}

func (g *grantTable) DeleteDomain(domain string) error {
	g.mu.Lock()
	delete(g.grants, domain)
	g.mu.Unlock()
	return nil
}
