// Package rules evaluates clinical rules on normalized observations of one patient: thresholds
// with hysteresis and minimum duration, rate of change, NEWS2 (Royal College of Physicians,
// 2017), per-patient anomaly detection (EWMA z-score) and no-data (a silent device).
//
// Every accepted sample is evaluated whatever order it arrives in (order is kept per code; a
// late sample re-runs the window it falls in; a sample stamped ahead of the clock is evaluated
// at the clock's time); a condition that holds is re-asserted, so that an alarm resolved by
// hand while it persists re-opens; implausible values that are sustained are physiology; a
// NEWS2 parameter without a current value makes the score partial and, after a while, raises
// "news2-incomplete". docs/clinical.md ("Alarm semantics") states these precisely.
//
// Rules are versioned: a change is a new, audited version, never an edit in place. Per-patient
// state is kept in memory and checkpointed to PostgreSQL with every alarm transition, so that a
// restarted Engine rebuilds it (from the checkpoint plus a replay of newer observations through
// History) without losing or duplicating an alarm. Conditions become alarms through package
// alarms.
//
// Its input is core/obs: the Observation type, and the Handoff through which core hands over
// the observations of every committed upload, which the Engine drains (Config.Handoff). This
// package MUST NOT import package core, nor core it: they meet in core/obs. It depends on the
// alarm lifecycle only through its own Alarms interface.
package rules
