package rules

import (
	"errors"
	"fmt"
	"time"

	"github.com/vigilhealth/vigil/core/alarms"
)

// Kind of rule.
type Kind string

// Rule kinds.
const (
	KindThreshold Kind = "threshold" // a value beyond a limit, with hysteresis and minimum duration
	KindRate      Kind = "rate"      // a value changing faster than a limit over a window
	KindNEWS2     Kind = "news2"     // the NEWS2 aggregate score and its response bands
	KindAnomaly   Kind = "anomaly"   // a value far from the patient's own recent baseline
	KindNoData    Kind = "nodata"    // no observation from the patient for a while
)

// Rule is one version of a rule. Versions are immutable: changing a rule makes a new version
// (CreateVersion), and alarms name the version that triggered them.
type Rule struct {
	ID        string    `json:"id"`      // stable slug, e.g. "hr-high"; alarms are per patient + ID
	Version   int       `json:"version"` // 1, 2, …
	Name      string    `json:"name"`
	Kind      Kind      `json:"kind"`
	Enabled   bool      `json:"enabled"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"` // actor id
	Reason    string    `json:"reason"`     // why this version exists (required)

	// Exactly the parameters of Kind are set.
	Threshold *ThresholdParams `json:"threshold,omitempty"`
	Rate      *RateParams      `json:"rate,omitempty"`
	NEWS2     *NEWS2Params     `json:"news2,omitempty"`
	Anomaly   *AnomalyParams   `json:"anomaly,omitempty"`
	NoData    *NoDataParams    `json:"nodata,omitempty"`

	// lastDisabled is the highest version of this rule that was disabled (0: none); a
	// patient's memory of an older version does not carry a raised condition across it,
	// since disabling resolved the rule's alarms.
	lastDisabled int
}

// Duration is a time.Duration that is written in JSON as a Go duration string ("5m").
type Duration time.Duration

// Direction of a threshold.
type Direction string

// Directions.
const (
	Above Direction = "above" // condition when value > limit
	Below Direction = "below" // condition when value < limit
)

// Level is one limit of a threshold rule and the severity when it is crossed.
type Level struct {
	Limit    float64         `json:"limit"`
	Severity alarms.Severity `json:"severity"`
}

// ThresholdParams: the condition holds at the most severe Level crossed (value > Limit for
// Above, < Limit for Below) continuously for MinDuration; it clears only when the value is back
// inside the least severe limit by Hysteresis (value <= Limit-Hysteresis for Above). Between
// levels the severity follows the value (escalates and de-escalates).
type ThresholdParams struct {
	Code        string    `json:"code"`
	Direction   Direction `json:"direction"`
	Levels      []Level   `json:"levels"` // at least one
	Hysteresis  float64   `json:"hysteresis"`
	MinDuration Duration  `json:"min_duration"`
	// WorsenBy: once raised, a value further past the limit by this much (in the code's unit)
	// than the value last alerted re-alerts at the same severity (an acknowledged alarm
	// becomes active again). Default (0): 10 % of the limit of the current level.
	WorsenBy float64 `json:"worsen_by,omitempty"`
}

// RateParams: the condition holds when the value changes by more than MaxChange (absolute, in
// the code's unit) within Window, in Direction (Above: a rise, Below: a fall).
type RateParams struct {
	Code      string          `json:"code"`
	Direction Direction       `json:"direction"`
	MaxChange float64         `json:"max_change"`
	Window    Duration        `json:"window"`
	Severity  alarms.Severity `json:"severity"`
	// Hold is how long the change must stay within the limit before the condition clears, so
	// that a change wavering around the limit does not open and close alarms. Default 0.
	Hold Duration `json:"hold,omitempty"`
}

// NEWS2Params: NEWS2 is computed from the latest value of each of the seven parameters no
// older than MaxAge; a parameter without one scores 0 and is named (a partial score, a lower
// bound, which alarms by its band). Severity by response: Low band (1–4) no alarm unless
// AlarmOnLow; a single parameter scoring 3 (low–medium) → SeverityMedium; 5–6 → SeverityHigh;
// ≥7 → SeverityCritical.
type NEWS2Params struct {
	MaxAge Duration `json:"max_age"` // default 1h
	// AssumeAir scores "air" when no oxygen observation is within MaxAge; AssumeAlert scores
	// "alert" when no consciousness observation is. Both default false: a missing parameter
	// means no score, never an under-score.
	AssumeAir   bool `json:"assume_air"`
	AssumeAlert bool `json:"assume_alert"`
	AlarmOnLow  bool `json:"alarm_on_low"`
	// Hold is how long a lower response must last before the alarm de-escalates or
	// resolves (a worse one escalates at once), so that a score wavering across a band limit
	// does not open and close alarms. Default 0 (immediate).
	Hold Duration `json:"hold,omitempty"`
	// IncompleteAfter: a parameter without a fresh value this long after the patient's first
	// NEWS2 parameter (or its ward's charted_max_age for a parameter the ward charts by hand)
	// raises the low-severity condition "<rule id>-incomplete", which names it. Default 10 min.
	IncompleteAfter Duration `json:"incomplete_after,omitempty"`
	// WorsenBy: once raised, a total this many points above the one last alerted re-alerts
	// at the same severity (an acknowledged alarm becomes active again). Default 2.
	WorsenBy int `json:"worsen_by,omitempty"`
}

// AnomalyParams: exponentially weighted mean and variance of the patient's own values of Code
// (weight Alpha); after Warmup values, a value whose |z| exceeds Z raises the condition
// (severity Severity), which clears after ClearAfter consecutive values within Z. Values are
// folded into the baseline clipped to mean ± Z·σ (a winsorized EWMA): one outlier barely moves
// the baseline, while a lasting change of level is learned within a few 1/Alpha values.
// σ is floored at MinStdDev so a very steady signal does not alarm on tiny changes.
type AnomalyParams struct {
	Code       string          `json:"code"`
	Alpha      float64         `json:"alpha"`  // default 0.05
	Z          float64         `json:"z"`      // default 4
	Warmup     int             `json:"warmup"` // default 30
	ClearAfter int             `json:"clear_after"`
	MinStdDev  float64         `json:"min_stddev"` // floor on the standard deviation (unit of Code)
	Severity   alarms.Severity `json:"severity"`
}

// NoDataParams: the condition holds when no observation of the patient (any code, artifacts
// included) has arrived for Silence; checked by Engine.Tick.
type NoDataParams struct {
	Silence  Duration        `json:"silence"`
	Severity alarms.Severity `json:"severity"`
}

// Errors callers branch on.
var (
	// ErrRuleNotFound: no rule with that id.
	ErrRuleNotFound = errors.New("rule not found")
	// ErrInvalidRule: the rule definition is malformed; nothing is stored.
	ErrInvalidRule = errors.New("invalid rule")
	// ErrVersionConflict: CreateVersion was based on a version that is no longer the latest.
	ErrVersionConflict = errors.New("rule version conflict")
)

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses a Go duration string ("90s", "5m").
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%w: duration %q: %v", ErrInvalidRule, b, err)
	}
	*d = Duration(v)
	return nil
}
