// Package audit makes every action Vigil takes provable: the audit event model, the
// transactional outbox that records an event in the same transaction as its action, and (in
// later files) the shipping of events to a Trillian log, proofs, signed checkpoints and
// verification.
package audit
