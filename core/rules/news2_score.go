package rules

import (
	"fmt"
	"math"
)

func computeNEWS2(in NEWS2Input) (NEWS2Score, error) {
	for _, v := range []float64{in.RespRate, in.SpO2, in.SystolicBP, in.Pulse, in.Temperature} {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return NEWS2Score{}, fmt.Errorf("%w: NEWS2 parameter is not a finite number", ErrInvalidRule)
		}
	}
	scale := in.SpO2Scale
	if scale == 0 {
		scale = 1
	}
	if scale != 1 && scale != 2 {
		return NEWS2Score{}, fmt.Errorf("%w: SpO2 scale %d (want 1 or 2)", ErrInvalidRule, in.SpO2Scale)
	}
	if in.Consciousness < ACVPUAlert || in.Consciousness > ACVPUUnresponsive {
		return NEWS2Score{}, fmt.Errorf("%w: ACVPU value %d (want 0..4)", ErrInvalidRule, in.Consciousness)
	}
	rr := math.Round(in.RespRate)
	spo2 := math.Round(in.SpO2)
	sbp := math.Round(in.SystolicBP)
	hr := math.Round(in.Pulse)
	temp := math.Round(in.Temperature*10) / 10

	s := NEWS2Score{SpO2Scale: scale}
	switch { // respiration rate
	case rr <= 8:
		s.RespRate = 3
	case rr <= 11:
		s.RespRate = 1
	case rr <= 20:
		s.RespRate = 0
	case rr <= 24:
		s.RespRate = 2
	default:
		s.RespRate = 3
	}
	if scale == 1 {
		switch {
		case spo2 <= 91:
			s.SpO2 = 3
		case spo2 <= 93:
			s.SpO2 = 2
		case spo2 <= 95:
			s.SpO2 = 1
		default:
			s.SpO2 = 0
		}
	} else {
		switch {
		case spo2 <= 83:
			s.SpO2 = 3
		case spo2 <= 85:
			s.SpO2 = 2
		case spo2 <= 87:
			s.SpO2 = 1
		case spo2 <= 92 || !in.OnOxygen: // 88–92, or ≥93 on air
			s.SpO2 = 0
		case spo2 <= 94: // on oxygen
			s.SpO2 = 1
		case spo2 <= 96:
			s.SpO2 = 2
		default:
			s.SpO2 = 3
		}
	}
	if in.OnOxygen {
		s.AirOrOxygen = 2
	}
	switch { // systolic blood pressure
	case sbp <= 90:
		s.SystolicBP = 3
	case sbp <= 100:
		s.SystolicBP = 2
	case sbp <= 110:
		s.SystolicBP = 1
	case sbp <= 219:
		s.SystolicBP = 0
	default:
		s.SystolicBP = 3
	}
	switch { // pulse
	case hr <= 40:
		s.Pulse = 3
	case hr <= 50:
		s.Pulse = 1
	case hr <= 90:
		s.Pulse = 0
	case hr <= 110:
		s.Pulse = 1
	case hr <= 130:
		s.Pulse = 2
	default:
		s.Pulse = 3
	}
	if in.Consciousness != ACVPUAlert {
		s.Consciousness = 3
	}
	switch { // temperature, compared in tenths to avoid float edge errors
	case temp <= 35.0+1e-9:
		s.Temperature = 3
	case temp <= 36.0+1e-9:
		s.Temperature = 1
	case temp <= 38.0+1e-9:
		s.Temperature = 0
	case temp <= 39.0+1e-9:
		s.Temperature = 1
	default:
		s.Temperature = 2
	}
	parts := []int{s.RespRate, s.SpO2, s.AirOrOxygen, s.SystolicBP, s.Pulse, s.Consciousness, s.Temperature}
	for _, p := range parts {
		s.Total += p
		if p == 3 {
			s.SingleRed = true
		}
	}
	switch {
	case s.Total >= 7:
		s.Band = BandHigh
	case s.Total >= 5:
		s.Band = BandMedium
	case s.SingleRed:
		s.Band = BandLowMedium
	default:
		s.Band = BandLow
	}
	return s, nil
}
