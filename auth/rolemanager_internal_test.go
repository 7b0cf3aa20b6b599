package auth

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// A grant state changed one grant at a time (through its overlay, folded into a new base
// every overlayMax changes) holds exactly the grants a table built from scratch holds, and
// every earlier state is left as it was (snapshots share them).
// Verifies: REQ-ACC-047
func TestGrantStateIncremental(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	want := map[string]map[[2]string]bool{} // subject → (role, domain)
	st := newGrantState()
	type frozen struct {
		st   *grantState
		want map[string]int
	}
	var past []frozen
	count := func() map[string]int {
		out := map[string]int{}
		for sub, gs := range want {
			out[sub] = len(gs)
		}
		return out
	}
	roles := []string{RoleClinician, RoleChargeNurse, RoleQuality}
	doms := []Domain{AllDomains, "ward:00000000-0000-7000-8000-000000000001", "ward:00000000-0000-7000-8000-000000000002"}
	for i := range 3 * overlayMax {
		x := RoleGrant{Subject: fmt.Sprintf("user:%d", rng.IntN(200)), Role: roles[rng.IntN(len(roles))], Domain: doms[rng.IntN(len(doms))]}
		k := [2]string{x.Role, string(x.Domain)}
		if want[x.Subject] == nil {
			want[x.Subject] = map[[2]string]bool{}
		}
		if rng.IntN(3) == 0 {
			st = st.with(nil, []RoleGrant{x})
			delete(want[x.Subject], k)
		} else {
			st = st.with([]RoleGrant{x}, nil)
			want[x.Subject][k] = true
		}
		if i%50 == 0 {
			past = append(past, frozen{st, count()})
		}
	}
	rm := &grantTable{}
	rm.cur.Store(st)
	for sub, gs := range want {
		got := st.of(sub)
		if len(got) != len(gs) {
			t.Fatalf("%s: %d grants, want %d (%v)", sub, len(got), len(gs), got)
		}
		for _, role := range roles {
			held := false
			for _, d := range doms {
				ok := rm.hasLink(sub, role, string(d))
				if ok != gs[[2]string{role, string(d)}] {
					t.Fatalf("HasLink(%s, %s, %s) = %v, want %v", sub, role, d, ok, !ok)
				}
				held = held || ok
			}
			if st.holds(sub, role) != held {
				t.Fatalf("holds(%s, %s) = %v, want %v", sub, role, !held, held)
			}
		}
	}
	for _, f := range past {
		for sub, n := range f.want {
			if got := len(f.st.of(sub)); got != n {
				t.Fatalf("an earlier state changed: %s has %d grants, had %d", sub, got, n)
			}
		}
	}
	if len(st.over) > overlayMax {
		t.Fatalf("overlay of %d subjects, want at most %d", len(st.over), overlayMax)
	}
	if bits := len(st.roleBit); bits != len(roles) || !slices.Contains([]int{3}, bits) {
		t.Fatalf("role bits %v", st.roleBit)
	}
}
