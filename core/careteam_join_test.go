package core_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/vigilhealth/vigil/core"
)

// Concurrent identical JoinCareTeam calls: exactly one stores and audits the member, every
// other gets ErrAlreadyMember (code already_member) with nothing stored or audited; a change of
// role is still a change.
// Verifies: REQ-POR-082
func TestJoinCareTeamConcurrentOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	pt := e.patient(t)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = e.svc.JoinCareTeam(e.ctx, clinician, pt, "clinician-7", "nurse")
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for _, err := range errs {
		var se *core.StateError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &se) && se.Code == "already_member" && errors.Is(err, core.ErrConflict):
		default:
			t.Errorf("JoinCareTeam = %v, want nil or already_member", err)
		}
	}
	count := func(q string) int {
		var k int
		if err := e.pool.QueryRow(e.ctx, q, pt.String()).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	if ok != 1 {
		t.Errorf("concurrent identical joins succeeded %d times, want 1", ok)
	}
	if k := count(`SELECT count(*) FROM audit_events WHERE action = 'care_team.member_added' AND object_id = $1`); k != 1 {
		t.Errorf("care_team.member_added events = %d, want 1", k)
	}
	if _, err := e.svc.JoinCareTeam(e.ctx, clinician, pt, "clinician-7", "physician"); err != nil {
		t.Errorf("JoinCareTeam with another role = %v, want the role changed", err)
	}
	if team, err := e.svc.CareTeam(e.ctx, pt); err != nil || len(team) != 1 || team[0].Role != "physician" {
		t.Errorf("team after the role change = %+v, %v; want one member, physician", team, err)
	}
}
