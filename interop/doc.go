// Package interop is the root of Vigil's standard interfaces with hospital systems: HL7 v2.5.1
// over MLLP (interop/hl7, interop/mllp, interop/hl7/inbound, interop/hl7/outbound) and the
// FHIR R4 mapping (interop/fhir). docs/interop.md is the specification of the message
// profiles and the FHIR resources.
//
// This package holds what the subpackages share: the audit Recorder they are given.
package interop

import "github.com/vigilhealth/vigil/audit"

// Recorder is the one way interop records an audit event: the process's audit recorder
// (audit.Recorder; *audit.Outbox in production and in tests through audit/audittest).
type Recorder = audit.Recorder
