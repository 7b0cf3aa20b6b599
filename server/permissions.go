package server

import (
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/portal"
)

// routeAccess is the route table's access column: what every route of the server needs, keyed
// "METHOD /path" exactly as the route is registered. A route missing here is refused (403
// forbidden) and fails TestEveryRouteHasAccess; an area that adds a route adds its line here in
// the same change. docs/access.md#routes explains the table.
//
// Objects and actions are the policy's (auth.Obj*); the default policy (auth.DefaultPolicy)
// says which roles hold them and on which basis (ward, care team, break-glass, global).
var routeAccess = map[string]access{
	// Probes: open, they tell nothing but health.
	"GET /healthz":  public(),
	"HEAD /healthz": public(),
	"GET /readyz":   public(),
	"HEAD /readyz":  public(),

	// Devices authenticate by their signatures (devices.go, unchanged); an upload's receipt and
	// proof are fetched by its hash; the receipt key is public.
	"POST /api/v1/uploads":              device(),
	"GET /api/v1/uploads/receipt-key":   public(),
	"GET /api/v1/uploads/:hash/proof":   device(),
	"GET /api/v1/uploads/:hash/receipt": device(),
	"POST /api/v1/devices/enroll":       device(),
	"POST /api/v1/devices/rotate":       device(),

	// Device registry (technicians; administrators read).
	"POST /api/v1/devices":                       allow(auth.ObjDevice, "manage"),
	"GET /api/v1/devices":                        allow(auth.ObjDevice, "read"),
	"GET /api/v1/devices/:id":                    allow(auth.ObjDevice, "read"),
	"GET /api/v1/devices/:id/keys":               allow(auth.ObjDevice, "read"),
	"GET /api/v1/devices/:id/assignments":        allow(auth.ObjDevice, "read"),
	"POST /api/v1/devices/:id/enrollment-tokens": allow(auth.ObjDevice, "enroll"),
	"POST /api/v1/devices/:id/suspend":           allow(auth.ObjDevice, "manage"),
	"POST /api/v1/devices/:id/reactivate":        allow(auth.ObjDevice, "manage"),
	"POST /api/v1/devices/:id/decommission":      allow(auth.ObjDevice, "manage"),
	"PUT /api/v1/devices/:id/patient":            allow(auth.ObjDevice, "manage"),

	// Alarms: lists are narrowed to the caller's patients; one alarm is its patient's.
	"GET /api/v1/alarms":                  allow(auth.ObjAlarm, "list").on(targetPatientQuery),
	"GET /api/v1/alarms/:id":              allow(auth.ObjAlarm, "read").on(targetAlarm).reads("alarm"),
	"POST /api/v1/alarms/:id/acknowledge": allow(auth.ObjAlarm, "acknowledge").on(targetAlarm),
	"POST /api/v1/alarms/:id/silence":     allow(auth.ObjAlarm, "silence").on(targetAlarm),
	"POST /api/v1/alarms/:id/resolve":     allow(auth.ObjAlarm, "resolve").on(targetAlarm),

	// Clinical rules: definitions are read by every clinician and changed for every ward by a
	// charge nurse of every ward; a patient's SpO2 scale and a ward's NEWS2 settings by that
	// ward's charge nurse.
	"GET /api/v1/rules":                   allow(auth.ObjRule, "read"),
	"GET /api/v1/rules/:id/versions":      allow(auth.ObjRule, "read"),
	"POST /api/v1/rules/:id/versions":     allow(auth.ObjRule, "write"),
	"PUT /api/v1/patients/:id/spo2-scale": allow(auth.ObjRule, "write").on(targetPatient),
	"POST /api/v1/patients/:id/chart":     allow(auth.ObjObservation, "chart").on(targetPatient),
	"PUT /api/v1/patients/:id/oxygen":     allow(auth.ObjObservation, "chart").on(targetPatient),
	"PUT /api/v1/wards/:id/news2":         allow(auth.ObjRule, "write").on(targetWard),
	"GET /api/v1/patients/:id/news2":      allow(auth.ObjObservation, "read").on(targetPatient).reads("news2"),

	// Audit trail (quality staff). The signed checkpoint and its verifier key are published:
	// they say nothing but the log's size and root, and witnesses and devices check them.
	"GET /api/v1/audit/checkpoint":   public(),
	"GET /api/v1/audit/verifier-key": public(),
	"GET /api/v1/audit/consistency":  public(), // hashes only: what an outside verifier or witness checks a newer checkpoint against
	"POST /api/v1/audit/checkpoint":  allow(auth.ObjAudit, "export"),
	"GET /api/v1/audit/verify":       allow(auth.ObjAudit, "read"),   // the latest background result
	"POST /api/v1/audit/verify":      allow(auth.ObjAudit, "verify"), // a full re-verification: auditors only
	"GET /api/v1/audit/events":       allow(auth.ObjAudit, "read"),
	"GET /api/v1/audit/events/:id":   allow(auth.ObjAudit, "read"),

	// Clinical core.
	"GET /api/v1/codes":                                self(), // reference data, no PHI
	"GET /api/v1/sites":                                allow(auth.ObjSite, "read"),
	"POST /api/v1/sites":                               allow(auth.ObjSite, "manage"),
	"GET /api/v1/sites/:id/wards":                      allow(auth.ObjSite, "read"),
	"POST /api/v1/sites/:id/wards":                     allow(auth.ObjSite, "manage"),
	"GET /api/v1/patients":                             allow(auth.ObjPatient, "list"),
	"POST /api/v1/patients":                            allow(auth.ObjPatient, "write").on(targetBodyWard),
	"GET /api/v1/patients/:id":                         allow(auth.ObjPatient, "read").on(targetPatient).reads("record"),
	"POST /api/v1/patients/:id/discharge":              allow(auth.ObjPatient, "write").on(targetPatient),
	"POST /api/v1/patients/:id/move":                   allow(auth.ObjPatient, "write").on(targetPatientMove),
	"GET /api/v1/patients/:id/care-team":               allow(auth.ObjCareTeam, "read").on(targetPatient).reads("care_team"),
	"POST /api/v1/patients/:id/care-team":              allow(auth.ObjCareTeam, "manage").on(targetPatient),
	"DELETE /api/v1/patients/:id/care-team/:clinician": allow(auth.ObjCareTeam, "manage").on(targetPatient),
	"GET /api/v1/patients/:id/observations":            allow(auth.ObjObservation, "read").on(targetPatient).reads("observations"),
	"GET /api/v1/patients/:id/latest":                  allow(auth.ObjObservation, "read").on(targetPatient).reads("latest_observations"),
	"GET /api/v1/stream":                               allow(auth.ObjStream, "subscribe"),
	"GET /api/v1/webhooks":                             allow(auth.ObjWebhook, "manage"),
	"POST /api/v1/webhooks":                            allow(auth.ObjWebhook, "manage"),
	"DELETE /api/v1/webhooks/:id":                      allow(auth.ObjWebhook, "manage"),
	"GET /api/v1/webhook-deliveries":                   allow(auth.ObjWebhook, "manage"),
	"POST /api/v1/webhook-deliveries/:id/redeliver":    allow(auth.ObjWebhook, "manage"),

	// Sign-in and the caller's own session (authroutes.go).
	"POST /api/v1/auth/sign-in":                  public(),
	"POST /api/v1/auth/enrollment":               public(),
	"POST /api/v1/auth/enrollment/complete":      public(),
	"GET /api/v1/auth/oidc/login":                public(),
	"GET /api/v1/auth/oidc/callback":             public(),
	"POST /api/v1/auth/passkeys/sign-in/begin":   public(),
	"POST /api/v1/auth/passkeys/sign-in/finish":  public(),
	"POST /api/v1/auth/passkeys/register/begin":  self(), // the signed-in user's own passkey
	"POST /api/v1/auth/passkeys/register/finish": self(),
	"GET /api/v1/auth/me":                        self(),
	"POST /api/v1/auth/sign-out":                 self(),
	"POST /api/v1/auth/sign-out-everywhere":      self(),

	// Break-glass: opened by a clinician, reviewed by quality staff.
	"POST /api/v1/patients/:id/break-glass": allow(auth.ObjBreakGlass, "open"),
	"GET /api/v1/break-glass":               allow(auth.ObjBreakGlass, "review"),
	"POST /api/v1/break-glass/:id/review":   allow(auth.ObjBreakGlass, "review"),

	// FHIR R4 (fhir.go). The route needs what lets one list or read the kind of data; which
	// patients' resources are shown is decided per patient by the same policy (observation,
	// patient or alarm read on the patient's ward or care team; another ward's resource is
	// not found), and every patient's data shown is audited as access.phi.read.
	"GET /fhir/R4/metadata":        public(), // the CapabilityStatement: what the server supports
	"GET /fhir/R4/Patient":         allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Patient/:id":     allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Encounter":       allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Encounter/:id":   allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Observation":     allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Observation/:id": allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Provenance":      allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Provenance/:id":  allow(auth.ObjPatient, "list"),
	"GET /fhir/R4/Flag":            allow(auth.ObjAlarm, "list"),
	"GET /fhir/R4/Flag/:id":        allow(auth.ObjAlarm, "list"),
	"GET /fhir/R4/Device":          allow(auth.ObjDevice, "read"),
	"GET /fhir/R4/Device/:id":      allow(auth.ObjDevice, "read"),
	"GET /fhir/R4/AuditEvent":      allow(auth.ObjAudit, "read"),
	"GET /fhir/R4/AuditEvent/:id":  allow(auth.ObjAudit, "read"),
	// FHIR Subscriptions (fhir_subscriptions.go): subscription manage, or an API token with
	// SMART scopes covering the topic's type (its own Subscriptions); decided by the handler.
	"POST /fhir/R4/Subscription":            self(),
	"GET /fhir/R4/Subscription":             self(),
	"GET /fhir/R4/Subscription/:id":         self(),
	"GET /fhir/R4/Subscription/:id/$status": self(),
	"DELETE /fhir/R4/Subscription/:id":      self(),
	"GET /fhir/R4/:type":                    self(), // an unknown resource type: 400 unknown_resource_type
	"GET /fhir/R4/:type/:id":                self(),

	// Service accounts' API tokens (administrators).
	"GET /api/v1/service-accounts":             allow(auth.ObjServiceAccount, "read"),
	"GET /api/v1/service-accounts/:id/tokens":  allow(auth.ObjServiceAccount, "read"),
	"POST /api/v1/service-accounts/:id/tokens": allow(auth.ObjServiceAccount, "manage"),
	"DELETE /api/v1/api-tokens/:id":            allow(auth.ObjServiceAccount, "manage"),
	"PUT /api/v1/api-tokens/:id/smart-scopes":  allow(auth.ObjServiceAccount, "manage"), // SMART on FHIR scopes (fhir_smart.go)
}

// The portal's pages authenticate and authorize themselves (a page without a session
// redirects to the sign-in page instead of answering 401; every tile is decided by the same
// policy and its read audited): package portal lists them.
func init() {
	for _, r := range portal.Routes() {
		routeAccess[r] = public()
	}
}
