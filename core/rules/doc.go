// Package rules evaluates clinical rules on normalized observations of one patient: thresholds
// with hysteresis and minimum duration, rate of change, NEWS2 (Royal College of Physicians,
// 2017), per-patient anomaly detection (EWMA z-score) and no-data (a silent device).
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
