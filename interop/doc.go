// Package interop is the root of Vigil's standard interfaces with hospital systems: HL7 v2.5.1
// over MLLP (interop/hl7, interop/mllp, interop/hl7/inbound, interop/hl7/outbound) and the
// FHIR R4 mapping (interop/fhir). docs/interop.md is the specification of the message
// profiles and the FHIR resources.
//
// This package holds what the subpackages share: the audit Recorder they are given.
package interop

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// Recorder is the one way interop records an audit event. It is a local copy of the
// audit.Recorder interface of the team's shared decisions (issue #10); audit.Service
// satisfies it once that lands (until then, interoptest.Recorder adapts audit.Record and
// (*audit.Service).RecordNow).
type Recorder interface {
	// Record writes ev inside tx, the action's own transaction (commits or rolls back with it).
	Record(ctx context.Context, tx pgx.Tx, ev audit.Event) (uuid.UUID, error)
	// RecordNow records an event that has no transaction of its own; group-committed;
	// returns once committed.
	RecordNow(ctx context.Context, ev audit.Event) (uuid.UUID, error)
}
