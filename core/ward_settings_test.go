package core_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/rules"
)

// TestSetWardNEWS2IfRefusesStaleWrites: a ward's NEWS2 settings saved against the version the
// caller saw — the first save of a ward (since zero) succeeds once; a save against settings
// changed meanwhile is refused with ErrVersionConflict and changes nothing; of two saves at
// once against the same version exactly one wins (the check is in the write's statement).
// Verifies: REQ-POR-046
func TestSetWardNEWS2IfRefusesStaleWrites(t *testing.T) {
	w := newWard(t)
	site, err := w.svc.CreateSite(w.ctx, clinician, "General")
	if err != nil {
		t.Fatal(err)
	}
	ward, err := w.svc.CreateWard(w.ctx, clinician, site.ID, "A")
	if err != nil {
		t.Fatal(err)
	}
	nurse := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "charge-nurse-1", AuthMethod: "password+totp"}}
	if err := w.eng.SetWardNEWS2If(w.ctx, nurse, ward.ID, []string{"acvpu"}, 4*time.Hour, "ACVPU on rounds", time.Time{}); err != nil {
		t.Fatalf("first save: %v", err)
	}
	err = w.eng.SetWardNEWS2If(w.ctx, nurse, ward.ID, []string{"temp"}, time.Hour, "from a page loaded before", time.Time{})
	if !errors.Is(err, rules.ErrVersionConflict) {
		t.Fatalf("a second 'first' save = %v, want ErrVersionConflict", err)
	}
	cur, err := w.eng.WardNEWS2Settings(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := cur[ward.ID]
	if seen.MaxAge != 4*time.Hour || len(seen.Charted) != 1 || seen.Charted[0] != "acvpu" || seen.UpdatedBy != "charge-nurse-1" {
		t.Fatalf("settings after the refused save = %+v", seen)
	}

	w.clock.Add(time.Second)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.eng.SetWardNEWS2If(w.ctx, nurse, ward.ID, []string{"acvpu", "temp"}, time.Duration(i+2)*time.Hour, "both at once", seen.UpdatedAt)
		}()
	}
	wg.Wait()
	ok, conflicts := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, rules.ErrVersionConflict):
			conflicts++
		default:
			t.Fatalf("concurrent save: %v", err)
		}
	}
	if ok != 1 || conflicts != 1 {
		t.Errorf("two saves against the same version: %d succeeded, %d refused; want 1 and 1", ok, conflicts)
	}
}
