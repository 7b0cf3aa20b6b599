package main

import (
	"context"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
	"github.com/vigilhealth/vigil/server"
)

// vigil serve turns passkeys on with VIGIL_WEBAUTHN_RP_ID and VIGIL_WEBAUTHN_ORIGINS, refuses
// a relying party id without origins, and leaves them off otherwise.
// Verifies: REQ-ACC-045
func TestWireAuthPasskeys(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ring := keystest.LocalRing(t, nil)
	sys := &system{pool: pool, rec: audittest.Recorder(t, pool, nil)}
	for _, tc := range []struct {
		env     map[string]string
		on      bool
		wantErr string
	}{
		{map[string]string{}, false, ""},
		{map[string]string{"VIGIL_WEBAUTHN_RP_ID": "vigil.hospital.example",
			"VIGIL_WEBAUTHN_ORIGINS": "https://vigil.hospital.example, https://portal.hospital.example"}, true, ""},
		{map[string]string{"VIGIL_WEBAUTHN_RP_ID": "vigil.hospital.example"}, false, "VIGIL_WEBAUTHN_ORIGINS is required"},
	} {
		var cfg server.Config
		err := wireAuth(withEnv(context.Background(), tc.env), sys, runConfig{}, &cfg, ring)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("wireAuth(%v) = %v, want an error saying %q", tc.env, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("wireAuth(%v) = %v", tc.env, err)
		case (cfg.Passkeys != nil) != tc.on:
			t.Errorf("wireAuth(%v): passkeys on = %v, want %v", tc.env, cfg.Passkeys != nil, tc.on)
		}
	}
}
