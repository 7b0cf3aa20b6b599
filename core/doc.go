// Package core is the clinical domain: patients, observations and their validation and
// normalization (LOINC/UCUM), time-series storage, clinical rules (thresholds, NEWS2, trends,
// anomalies), the alarm lifecycle and notifications.
package core
