package auth

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
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

// A decision that straddles a grant change — the role manager already answers with the new
// grants while the snapshot (and so the memo key, the subject's role profile) is the old one —
// is neither used nor remembered: remembered under the old profile, a refusal computed with
// the new grants would be given to every other subject of that profile. The decision is asked
// again once the new snapshot is in place.
// Verifies: REQ-ACC-047, REQ-ACC-041
func TestDecisionStraddlingAGrantChange(t *testing.T) {
	e := &Enforcer{now: func() time.Time { return time.Unix(0, 0) }}
	var lines [][]string
	for _, r := range DefaultPolicy() {
		lines = append(lines, []string{r.Role, r.Object, r.Action, r.Scope})
	}
	rs, err := e.buildRules(lines)
	if err != nil {
		t.Fatal(err)
	}
	ward := WardDomain(uuid.Must(uuid.NewV7()))
	w, _ := ward.Ward()
	g1 := newGrantState().with([]RoleGrant{{Subject: "user:1", Role: RoleClinician, Domain: ward}, {Subject: "user:2", Role: RoleClinician, Domain: ward}}, nil)
	s1 := &snapshot{version: 1, rules: rs, grants: g1, glass: map[string]map[uuid.UUID][]grantRef{}, memo: newMemo()}
	e.publish(s1)
	tgt := Target{Object: ObjObservation, Ward: w}
	// The revocation of user:1 is half published: the role manager has it, the snapshot not yet.
	g2 := g1.with(nil, []RoleGrant{{Subject: "user:1", Role: RoleClinician, Domain: ward}})
	e.rm.cur.Store(g2)
	if _, err := e.decide(s1, "user:1", "", "read", tgt); !errors.Is(err, errInconsistent) {
		t.Fatalf("decide(straddling) = %v, want errInconsistent", err)
	}
	if n := len(s1.memo.m); n != 0 {
		t.Fatalf("%d answers remembered from a straddling decision, want none", n)
	}
	// Decide asks again until the snapshot is published, then answers with it.
	got := make(chan Decision, 1)
	go func() {
		d, err := e.Decide("user:1", "", "read", tgt)
		if err != nil {
			t.Error(err)
		}
		got <- d
	}()
	time.Sleep(20 * time.Millisecond)
	e.publish(&snapshot{version: 2, rules: rs, grants: g2, glass: s1.glass, memo: s1.memo})
	if d := <-got; d.Allowed || d.Version != 2 {
		t.Fatalf("Decide(revoked user:1) = %+v, want refused at version 2", d)
	}
	if d, err := e.Decide("user:2", "", "read", tgt); err != nil || !d.Allowed {
		t.Fatalf("Decide(user:2, same ward, never revoked) = %+v, %v; want allowed", d, err)
	}
}
