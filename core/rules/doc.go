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
// This package MUST NOT import package core (core imports it): its input is Observation.
package rules
