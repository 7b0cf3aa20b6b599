package rules

// NEWS2Input is the seven NEWS2 parameters. Values are in the canonical units; RespRate,
// SpO2, SystolicBP and Pulse are rounded to the nearest whole number and Temperature to one
// decimal before scoring, as charted on the RCP observation chart.
type NEWS2Input struct {
	RespRate      float64 // /min
	SpO2          float64 // %
	SpO2Scale     int     // 1 (default when 0) or 2 (hypercapnic respiratory failure)
	OnOxygen      bool    // supplemental oxygen (false: air)
	SystolicBP    float64 // mm[Hg]
	Pulse         float64 // /min
	Consciousness int     // ACVPU: ACVPUAlert … ACVPUUnresponsive
	Temperature   float64 // Cel
}

// Band is the NEWS2 clinical response band.
type Band string

// Bands (RCP 2017, chart 2).
const (
	BandLow       Band = "low"        // aggregate 0–4
	BandLowMedium Band = "low_medium" // a single parameter scores 3 (aggregate 0–4): urgent ward-based response
	BandMedium    Band = "medium"     // aggregate 5–6: key threshold for urgent response
	BandHigh      Band = "high"       // aggregate 7 or more: emergency response
)

// NEWS2Score is a NEWS2 result with its components.
type NEWS2Score struct {
	Total         int  `json:"total"`
	RespRate      int  `json:"resp_rate"`
	SpO2          int  `json:"spo2"`
	SpO2Scale     int  `json:"spo2_scale"`
	AirOrOxygen   int  `json:"air_or_oxygen"`
	SystolicBP    int  `json:"systolic_bp"`
	Pulse         int  `json:"pulse"`
	Consciousness int  `json:"consciousness"`
	Temperature   int  `json:"temperature"`
	SingleRed     bool `json:"single_red"` // some parameter scored 3
	Band          Band `json:"band"`
	// AssumedAir / AssumedAlert: no observation of that parameter was fresh and the rule's
	// assume_air / assume_alert default was scored instead (shown to the clinician).
	AssumedAir   bool `json:"assumed_air,omitempty"`
	AssumedAlert bool `json:"assumed_alert,omitempty"`
	// OxygenDocumented: no oxygen observation was fresh and the patient is documented as on
	// supplemental oxygen, which was scored.
	OxygenDocumented bool `json:"oxygen_documented,omitempty"`
	// Partial: some parameters had no fresh value (Missing names them: "resp_rate", "spo2",
	// "oxygen", "systolic_bp", "pulse", "consciousness", "temperature") and scored 0, so
	// Total is a lower bound, and the band and alarm are those of that lower bound.
	Partial bool     `json:"partial,omitempty"`
	Missing []string `json:"missing,omitempty"`
	// Values are the measured values scored, by the same names, in canonical units
	// (temperature °C, SpO2 %, rates /min, pressure mmHg, FiO2 %, O2 flow L/min, ACVPU code).
	Values map[string]float64 `json:"values,omitempty"`
	// RescoredLate: the score of a past moment, computed when a sample of that moment arrived
	// late (values older than the late window count as missing: a lower bound).
	RescoredLate bool `json:"rescored_late,omitempty"`
}

// sameScore reports whether two scores differ in nothing but the measured values.
func sameScore(a, b NEWS2Score) bool {
	if a.Total != b.Total || a.RespRate != b.RespRate || a.SpO2 != b.SpO2 || a.SpO2Scale != b.SpO2Scale ||
		a.AirOrOxygen != b.AirOrOxygen || a.SystolicBP != b.SystolicBP || a.Pulse != b.Pulse ||
		a.Consciousness != b.Consciousness || a.Temperature != b.Temperature || a.SingleRed != b.SingleRed ||
		a.Band != b.Band || a.AssumedAir != b.AssumedAir || a.AssumedAlert != b.AssumedAlert ||
		a.OxygenDocumented != b.OxygenDocumented || a.Partial != b.Partial || len(a.Missing) != len(b.Missing) {
		return false
	}
	for i := range a.Missing {
		if a.Missing[i] != b.Missing[i] {
			return false
		}
	}
	return true
}

// ComputeNEWS2 scores in. It returns ErrInvalidRule-wrapped errors for an SpO2 scale other
// than 0, 1 or 2 or an ACVPU value out of range, and for non-finite values.
func ComputeNEWS2(in NEWS2Input) (NEWS2Score, error) { return computeNEWS2(in) }
