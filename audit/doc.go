// Package audit is the recording side of Vigil's audit trail: the event model (Event, Actor,
// Object, Outcome), the Recorder interface every service receives in its Config, and its one
// implementation, the Outbox, which prepares each event (id, time, salt, the commitments that
// enter the log) and writes it into the audit_events outbox table — inside the action's own
// transaction (Record: the event commits or rolls back with the action), or group-committed
// for events that have no transaction of their own (RecordNow). The Outbox is also the owner
// of the backlog: Admit tells callers to push back (ErrPushback) when the log is far behind.
//
// Nothing here talks to the transparency log: shipping to Trillian, checkpoints, proofs,
// verification and audit packs are package audit/chain. The wire formats are in audit/leaf;
// docs/audit.md is the specification, docs/architecture.md the map.
package audit
