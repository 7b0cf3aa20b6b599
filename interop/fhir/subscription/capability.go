package subscription

import (
	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Describe adds Subscription to a CapabilityStatement: the create, read, search and delete
// interactions, one capabilitystatement-subscriptiontopic-canonical extension per topic, and
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
			"No handshake, no heartbeat.")}
	for _, t := range Topics {
		r.Extension = append(r.Extension, m.Extension{Url: ExtTopicCanonical, ValueCanonical: ptr(t.URL)})
	}
	cs.Rest[0].Resource = append(cs.Rest[0].Resource, r)
	cs.ImplementationGuide = append(cs.ImplementationGuide, IGCanonical)
}
