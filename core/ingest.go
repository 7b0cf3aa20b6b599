package core

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// This file is the meeting point of core and devices: devices verifies a signed upload and
// hands core a Batch; core validates, normalizes and stores it with its audit event in one
// transaction, then runs the clinical rules.

// Sample is one measured value as a device sent it (before validation and normalization).
type Sample struct {
	Code  string    // LOINC code, e.g. "8867-4" (heart rate)
	Value float64   // in Unit
	Unit  string    // UCUM unit as sent, e.g. "/min", "[degF]"
	Time  time.Time // effective time of the measurement
}

// Provenance says where a batch came from, so each stored observation can be traced back to
// the signed upload that carried it.
type Provenance struct {
	DeviceID   string    // registry id of the sending device
	KeyID      string    // device key id (with version) that signed the upload
	UploadHash [32]byte  // SHA-256 of the upload's canonical bytes
	Sequence   uint64    // the upload's sequence number
	ReceivedAt time.Time // when the server accepted it
	Transport  string    // "http" or "mqtt"
}

// Batch is one verified upload's samples for one patient.
type Batch struct {
	PatientID  uuid.UUID
	Provenance Provenance
	Samples    []Sample
}

// TxHook runs inside the ingest transaction after the samples and the upload's audit event are
// written and before commit; devices uses it to advance the device's sequence number and store
// the upload's receipt atomically with the data. An error from the hook rolls everything back.
type TxHook func(ctx context.Context, tx pgx.Tx, r IngestResult) error

// IngestResult says what Ingest stored.
type IngestResult struct {
	AuditEventID uuid.UUID // the upload's audit event (in the same transaction)
	Stored       int       // observations stored
	Flagged      int       // observations stored but flagged as artifacts
}
