// Package core is the clinical domain: patients (identifying data sealed), observations and
// their validation and normalization (LOINC/UCUM), time-series storage and queries,
// partitions and retention, the notification hub (SSE) and webhooks. Its subpackages are the
// observation type and its hand-off to the rules (core/obs), the clinical rules (core/rules)
// and the alarm lifecycle (core/alarms).
//
// Ingest is three calls around the caller's transaction: Prepare (validate, nothing written),
// Store (observations, provenance and audit events in the caller's tx), Publish (after the
// commit: the live stream and the rules' hand-off); Ingest and IngestMany run them in a
// transaction of their own. docs/clinical.md and docs/architecture.md describe the path.
package core
