// Package alarms is the clinical alarm lifecycle: at most one open alarm per patient and rule
// (a re-trigger updates it), severity that escalates and de-escalates, acknowledgement (who and
// when) distinct from silencing (with a reason and an expiry), escalation to the next tier when
// unacknowledged, reminders at a decaying interval until acknowledged, and resolution, either
// automatic when the condition clears or by hand with a reason.
//
// Alarms live in PostgreSQL. Every transition is recorded with the audit Recorder in the same
// transaction as the change, and reported to a Notifier after that transaction commits. The
// clock is injected (Config.Now) and time-driven transitions (escalation, reminders, silence
// expiry) happen only when Tick is called, so tests drive them with a controlled clock.
package alarms
