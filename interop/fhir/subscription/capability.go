package subscription

import (
	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Describe adds Subscription to a CapabilityStatement: the create, read, search and delete
// interactions, the $status operation, one capabilitystatement-subscriptiontopic-canonical extension per topic, and
// the backport IG in implementationGuide.
func Describe(cs *m.CapabilityStatement) {
	if len(cs.Rest) == 0 {
		return
	}
	r := m.CapabilityStatementRestResource{Type: m.ResourceTypeSubscription,
		Interaction: []m.CapabilityStatementRestResourceInteraction{{Code: m.TypeRestfulInteractionCreate},
			{Code: m.TypeRestfulInteractionRead}, {Code: m.TypeRestfulInteractionSearchType}, {Code: m.TypeRestfulInteractionDelete}},
		SupportedProfile: []string{BackportIG + "/StructureDefinition/backport-subscription"},
		Documentation: ptr("Subscriptions R5 Backport (R4), channel rest-hook, payload application/fhir+json with content id-only " +
			"(default) or full-resource (only for an owner who may read the patients covered, checked at every event); filter: patient=. " +
			"Notifications are signed (Vigil-Signature; the secret is returned once, in the Vigil-Webhook-Secret header of the create). " +
			"A handshake notification when created, heartbeat notifications when backport-heartbeat-period asks " +
			"(10 to 86400 s), and $status.")}
	r.Operation = []m.CapabilityStatementRestResourceOperation{{Name: "status", Definition: OpStatus}}
	for _, t := range Topics {
		r.Extension = append(r.Extension, m.Extension{Url: ExtTopicCanonical, ValueCanonical: ptr(t.URL)})
	}
	cs.Rest[0].Resource = append(cs.Rest[0].Resource, r)
	cs.ImplementationGuide = append(cs.ImplementationGuide, IGCanonical)
}

// OpStatus is the backport IG's $status operation.
const OpStatus = BackportIG + "/OperationDefinition/backport-subscription-status"
