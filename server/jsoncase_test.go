package server

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/devices"
)

// goNames returns the fields of t (and of every struct reachable from it) that encoding/json
// would write under their Go name: an exported field without a json tag name, or with one
// that is not snake_case. Types that marshal themselves are not entered.
func goNames(t reflect.Type, path string, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return nil
	}
	seen[t] = true
	marshaler := reflect.TypeFor[json.Marshaler]()
	text := reflect.TypeFor[encoding.TextMarshaler]()
	if t.Implements(marshaler) || reflect.PointerTo(t).Implements(marshaler) || t.Implements(text) || reflect.PointerTo(t).Implements(text) {
		return nil
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			out = append(out, goNames(f.Type, path, seen)...)
			continue
		}
		if !snakeKey.MatchString(name) {
			out = append(out, path+"."+f.Name)
		}
		out = append(out, goNames(f.Type, path+"."+f.Name, seen)...)
	}
	return out
}

// Issue #12 (hazard 7): one JSON casing everywhere. Every type the API answers with (and the
// alarm transitions the stream and webhooks carry) names its members in snake_case, never by
// a Go field name (the actor was {"Kind","ID"} once).
// Verifies: REQ-CORE-132
func TestAPIAnswersUseOneJSONCasing(t *testing.T) {
	for _, v := range []any{
		alarmAnswer{}, alarms.Transition{}, audit.Actor{}, audit.Object{}, sessionAnswer{}, receiptJSON{}, errorBody{},
		rules.Rule{}, rules.NEWS2Record{}, rules.Readable{},
		core.Patient{}, core.Site{}, core.Ward{}, core.Observation{}, core.CareTeamMember{}, core.Event{},
		core.Webhook{}, core.Delivery{},
		devices.Device{}, devices.Key{}, devices.Assignment{},
		auth.Principal{}, auth.RoleGrant{}, auth.Decision{}, auth.BreakGlassGrant{}, auth.ServiceAccount{},
		auth.APIToken{}, auth.TOTPOffer{},
		chain.EventPage{}, chain.EventProof{}, chain.Report{}, chain.ConsistencyProof{},
	} {
		typ := reflect.TypeOf(v)
		if bad := goNames(typ, typ.String(), map[reflect.Type]bool{}); len(bad) > 0 {
			t.Errorf("%s writes Go field names in JSON: %v", typ, bad)
		}
	}
}
