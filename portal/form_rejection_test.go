package portal_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/vigilhealth/vigil/auth"
)

// A form the portal refuses itself (its own check, answered as the form again with the
// error next to the field, no error returned to the server) is still audited: one
// http.request.rejected event with the request's id, its route and status, and nothing
// changed. The old middleware left such a refusal out of the trail (it counted on the error
// handler, which never saw it).
// Verifies: REQ-POR-060
func TestPortalFormRejectionAudited(t *testing.T) {
	s := newStack(t)
	tEmail, tSecret, _ := s.staff(t, auth.RoleDeviceTechnician)
	tech := s.signedInAs(t, tEmail, tSecret)
	res := s.postFormAs(t, tech, "/devices/"+s.device.ID.String()+"/status", url.Values{"status": {"suspended"}, "reason": {" "}}, true)
	rid := res.Header.Get("X-Request-Id")
	if b := body(t, res); res.StatusCode != http.StatusUnprocessableEntity || rid == "" {
		t.Fatalf("suspend without a reason = %d (request id %q):\n%.300s", res.StatusCode, rid, b)
	}
	// The middleware records it before the handler chain returns, so before the page's body
	// has ended (body read it to the end).
	if n := s.Count(t, `SELECT count(*) FROM audit_events WHERE request_id = $1 AND action = 'http.request.rejected'
		AND outcome = 'rejected' AND object_id = 'POST /devices/:id/status' AND (payload->>'status')::int = 422`, rid); n != 1 {
		t.Errorf("http.request.rejected events of the refused form = %d, want 1", n)
	}
	if n := s.Count(t, `SELECT count(*) FROM audit_events WHERE request_id = $1`, rid); n != 1 {
		t.Errorf("events of the refused form = %d, want 1 (the rejection alone)", n)
	}
	if d, err := s.Devices.Get(s.Ctx, s.device.ID); err != nil || d.Status == "suspended" {
		t.Errorf("device after the refused form = %+v, %v; want it unchanged", d.Status, err)
	}
}
