// Package audit makes every action Vigil takes provable: the audit event model and the
// transactional outbox (Record, RecordMany: an event commits or rolls back with its action),
// the shipper that seals pending events into batches and ships each batch as one leaf to a
// Trillian log (embedded, audit/trillianembed, or external), signed C2SP checkpoints proven
// consistent before they are stored, end-to-end verification that names every tampered
// event, and self-contained audit packs verified offline. The wire formats are in
// audit/leaf; docs/audit.md is the specification.
package audit
