package core

import (
	"testing"

	"github.com/google/uuid"
)

// A replica reads another replica's live observations from the database only for a
// subscriber that takes remote events: a subscriber of local events only (the FHIR
// Subscriptions' dispatcher, Filter.Local) wants its own replica's observations, not the
// others'. (Before, Wants ignored Local and every replica read every upload.)
// Verifies: REQ-INT-039
func TestWantsRemoteSkipsLocalSubscribers(t *testing.T) {
	h := NewHub(HubConfig{})
	defer h.Close()
	p := uuid.New()
	local := h.Subscribe(Filter{Types: map[string]bool{TypeObservations: true}, Local: true})
	if !h.wants(TypeObservations, p, false) || h.wants(TypeObservations, p, true) {
		t.Errorf("Local subscriber: wants(local) = %v, wants(remote) = %v; want true, false",
			h.wants(TypeObservations, p, false), h.wants(TypeObservations, p, true))
	}
	local.Close()
	all := h.Subscribe(Filter{Types: map[string]bool{TypeObservations: true}})
	defer all.Close()
	if !h.wants(TypeObservations, p, true) {
		t.Errorf("a subscriber of every replica's observations: wants(remote) = false, want true")
	}
}
