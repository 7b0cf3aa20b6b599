package fhir

import (
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	m "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// AuditEvent is one event of Vigil's audit trail (audit.Event as stored).
type AuditEvent struct {
	ID         string
	Time       time.Time
	Action     string // dotted verb, e.g. "upload.accepted"
	Outcome    string // success, rejected, failure
	Reason     string // stable code of a rejection or failure
	ActorKind  string // user, device, service
	ActorID    string
	AuthMethod string
	ObjectType string // e.g. "patient", "upload", "alarm"
	ObjectID   string
	PatientID  string // the patient concerned, when there is one
	SourceAddr string
	RequestID  string
	LeafIndex  *int64 // the audit log leaf holding the event, once shipped
}

// actionCode maps a dotted verb's last word to the FHIR AuditEvent action (C R U D E).
func actionCode(action string) m.AuditEventAction {
	last := action[strings.LastIndexByte(action, '.')+1:]
	switch last {
	case "created", "accepted", "enrolled", "admitted", "opened", "added", "registered":
		return m.AuditEventActionC
	case "read", "viewed", "searched", "exported":
		return m.AuditEventActionR
	case "deleted", "removed", "purged", "erased":
		return m.AuditEventActionD
	case "updated", "moved", "discharged", "acknowledged", "resolved", "silenced", "rotated", "changed":
		return m.AuditEventActionU
	}
	return m.AuditEventActionE
}

// RenderAuditEvent renders an audit event following the IHE Basic Audit Log Patterns where
// they fit: type the Vigil action (code system audit-action), action C/R/U/D/E from its verb,
// outcome 0 (success), 4 (rejected: minor failure) or 8 (failure), the acting principal as
// the requesting agent with its network address, Vigil as the source (an application
// server), the object and the patient as entities, and the audit log leaf as an entity
// detail once known.
func RenderAuditEvent(e AuditEvent) m.AuditEvent {
	outcome := map[string]m.AuditEventOutcome{"success": m.AuditEventOutcome0, "rejected": m.AuditEventOutcome4}[e.Outcome]
	if e.Outcome != "success" && e.Outcome != "rejected" {
		outcome = m.AuditEventOutcome8
	}
	act := actionCode(e.Action)
	agent := m.AuditEventAgent{Requestor: true,
		Type: ptr(concept("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser", "human user")),
		Who:  &m.Reference{Identifier: &m.Identifier{System: ptr(Base + "/sid/actor-" + e.ActorKind), Value: &e.ActorID}}}
	switch e.ActorKind {
	case "device":
		agent.Type = ptr(concept("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID"))
		agent.Who.Reference = ptr("Device/" + e.ActorID)
	case "service":
		agent.Type = ptr(concept("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "dataprocessor", "data processor"))
	}
	if e.SourceAddr != "" {
		host := e.SourceAddr
		if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
			host = host[:i]
		}
		agent.Network = &m.AuditEventAgentNetwork{Address: ptr(strings.Trim(host, "[]")), Type: ptr(m.AuditEventAgentNetworkType2)}
	}
	if e.AuthMethod != "" {
		agent.Policy = []string{Base + "/auth-method/" + e.AuthMethod}
	}
	r := m.AuditEvent{Id: &e.ID, Type: coding(AuditActionSystem, e.Action, ""), Action: &act, Recorded: instant(e.Time),
		Outcome: &outcome, OutcomeDesc: nilIfEmpty(e.Reason), Agent: []m.AuditEventAgent{agent},
		Source: m.AuditEventSource{Observer: m.Reference{Display: ptr("Vigil")},
			Type: []m.Coding{coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")}}}
	if e.ObjectType != "" {
		ent := m.AuditEventEntity{What: &m.Reference{Identifier: &m.Identifier{System: ptr(Base + "/sid/" + e.ObjectType), Value: nilIfEmpty(e.ObjectID)}},
			Type: ptr(coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"))}
		// Extensions, not entity.detail: the model library writes both detail.value[x]
		// choices (valueString and an empty valueBase64Binary), which is invalid FHIR.
		if e.RequestID != "" {
			ent.Extension = append(ent.Extension, m.Extension{Url: ExtRequestID, ValueString: &e.RequestID})
		}
		if e.LeafIndex != nil {
			ent.Extension = append(ent.Extension, m.Extension{Url: ExtLeafIndex, ValueString: ptr(strconv.FormatInt(*e.LeafIndex, 10))})
		}
		r.Entity = append(r.Entity, ent)
	}
	if e.PatientID != "" {
		r.Entity = append(r.Entity, m.AuditEventEntity{What: ref("Patient", e.PatientID),
			Type: ptr(coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person")),
			Role: ptr(coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"))})
	}
	return r
}

// Upload is the evidence of one signed upload: what Provenance carries.
type Upload struct {
	ID         string    // Provenance id (e.g. the upload's audit event id)
	Targets    []string  // ids of the Observations the upload carried
	DeviceID   string    // the signing device
	KeyID      string    // the device key (with version) that signed
	Hash       [32]byte  // SHA-256 of the canonical upload body
	Signature  []byte    // the device's Ed25519 signature over the canonical body (64 bytes)
	SignedAt   time.Time // when the device signed (sent_at)
	ReceivedAt time.Time // when Vigil accepted it
	// Receipt: Vigil's signed receipt (envelope.SignedReceipt, CBOR) and the key that
	// signed it; the audit event that records the upload and, once shipped, its leaf.
	Receipt          []byte
	ReceiptKeyID     string
	ReceiptSignedAt  time.Time
	AuditEventID     string
	AuditLeafIndex   *int64
	PatientID        string
	ReceiptSignature []byte // Vigil's signature inside Receipt (for a verifier that reads FHIR only)
	// TargetPatient makes the patient the target when the upload stored no observation
	// (every sample was already stored): a Provenance needs a target.
	TargetPatient bool
}

// Signature types (ASTM E1762-95).
const (
	sigTypeSystem      = "urn:iso-astm:E1762-95:2013"
	sigSource          = "1.2.840.10065.1.12.1.14" // Source Signature
	sigVerification    = "1.2.840.10065.1.12.1.5"  // Verification Signature
	sigFormatEd25519   = "application/octet-stream"
	targetFormatUpload = "application/cbor"
)

// RenderProvenance renders one upload's Provenance: target its observations, agent the
// device, entity the upload (identified by its SHA-256), signature[0] the device's Ed25519
// signature over the canonical upload body (sigFormat raw bytes, targetFormat CBOR), and,
// when given, signature[1] Vigil's signed receipt; extensions name the upload's audit event
// and the audit log leaf that holds it, so a verifier can go from a FHIR Observation to
// the transparency-log proof.
func RenderProvenance(u Upload) m.Provenance {
	p := m.Provenance{Id: &u.ID, Recorded: instant(u.ReceivedAt),
		Activity: ptr(concept("http://terminology.hl7.org/CodeSystem/v3-DataOperation", "CREATE", "create")),
		Agent: []m.ProvenanceAgent{{Type: ptr(concept("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", "Author")),
			Who: *ref("Device", u.DeviceID)}},
		Entity: []m.ProvenanceEntity{{Role: m.ProvenanceEntityRoleSource,
			What: m.Reference{Identifier: &m.Identifier{System: ptr(UploadHashSystem), Value: ptr(hex.EncodeToString(u.Hash[:]))},
				Display: ptr("signed upload, device key " + u.KeyID)}}}}
	if !u.SignedAt.IsZero() {
		p.OccurredDateTime = ptr(instant(u.SignedAt))
	}
	for _, t := range u.Targets {
		p.Target = append(p.Target, *ref("Observation", t))
	}
	if u.TargetPatient && u.PatientID != "" {
		p.Target = append(p.Target, *ref("Patient", u.PatientID))
	}
	if len(u.Signature) > 0 && !u.SignedAt.IsZero() {
		p.Signature = append(p.Signature, m.Signature{Type: []m.Coding{coding(sigTypeSystem, sigSource, "Source Signature")},
			When: instant(u.SignedAt), Who: *ref("Device", u.DeviceID), SigFormat: ptr(sigFormatEd25519),
			TargetFormat: ptr(targetFormatUpload), Data: sigData(u.Signature)})
	}
	if len(u.Receipt) > 0 {
		when := u.ReceiptSignedAt
		if when.IsZero() {
			when = u.ReceivedAt
		}
		p.Signature = append(p.Signature, m.Signature{Type: []m.Coding{coding(sigTypeSystem, sigVerification, "Verification Signature")},
			When: instant(when), Who: m.Reference{Display: ptr("Vigil receipt key " + u.ReceiptKeyID)},
			SigFormat: ptr("application/cbor"), TargetFormat: ptr(targetFormatUpload), Data: sigData(u.Receipt)})
	}
	if u.AuditEventID != "" {
		p.Extension = append(p.Extension, m.Extension{Url: ExtAuditEvent, ValueReference: ref("AuditEvent", u.AuditEventID)})
	}
	if u.AuditLeafIndex != nil {
		p.Extension = append(p.Extension, m.Extension{Url: ExtLeafIndex, ValueString: ptr(strconv.FormatInt(*u.AuditLeafIndex, 10))})
	}
	return p
}

// Problem is one issue of an OperationOutcome: Vigil's stable error code (the same as the
// JSON error envelope's, docs/api.md), the FHIR issue type and a message.
type Problem struct {
	Code       string // e.g. "unknown_search_parameter"
	Type       string // FHIR issue type: invalid, not-found, forbidden, processing, not-supported, exception …
	Severity   string // error (default), warning, information, fatal
	Message    string
	Expression string // FHIRPath of the element or the search parameter's name
}

// RenderOperationOutcome renders problems as an OperationOutcome.
func RenderOperationOutcome(id string, problems ...Problem) m.OperationOutcome {
	o := m.OperationOutcome{Id: nilIfEmpty(id)}
	for _, p := range problems {
		sev := map[string]m.IssueSeverity{"fatal": m.IssueSeverityFatal, "warning": m.IssueSeverityWarning,
			"information": m.IssueSeverityInformation}[p.Severity]
		if p.Severity == "" || p.Severity == "error" {
			sev = m.IssueSeverityError
		}
		var t m.IssueType
		if err := t.UnmarshalJSON([]byte(strconvQuote(p.Type))); err != nil {
			t = m.IssueTypeProcessing
		}
		is := m.OperationOutcomeIssue{Severity: sev, Code: t, Diagnostics: nilIfEmpty(p.Message)}
		if p.Code != "" {
			is.Details = ptr(concept(ErrorCodeSystem, p.Code, ""))
		}
		if p.Expression != "" {
			is.Expression = []string{p.Expression}
		}
		o.Issue = append(o.Issue, is)
	}
	return o
}

func strconvQuote(s string) string { return strconv.Quote(s) }
