package rules_test

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/vigilhealth/vigil/core/rules"
)

// normal scores 0 on every parameter.
func normal() rules.NEWS2Input {
	return rules.NEWS2Input{RespRate: 16, SpO2: 97, SpO2Scale: 1, SystolicBP: 120, Pulse: 70,
		Consciousness: rules.ACVPUAlert, Temperature: 37.0}
}

type param int

const (
	pRR param = iota
	pSpO2
	pO2
	pSBP
	pHR
	pACVPU
	pTemp
)

func component(s rules.NEWS2Score, p param) int {
	return [...]int{s.RespRate, s.SpO2, s.AirOrOxygen, s.SystolicBP, s.Pulse, s.Consciousness, s.Temperature}[p]
}

// Every band of every parameter, at both edges of each band, hand-computed from the RCP 2017
// NEWS2 chart, including SpO2 scale 1, scale 2 on air and on oxygen, and rounding as charted.
// Verifies: REQ-CORE-100, REQ-CORE-101
func TestNEWS2ParameterBands(t *testing.T) {
	t.Parallel()
	type tc struct {
		p      param
		set    func(*rules.NEWS2Input)
		score  int // the parameter's score
		extraO int // the air/oxygen score that comes with the case
	}
	rr := func(v float64) func(*rules.NEWS2Input) { return func(in *rules.NEWS2Input) { in.RespRate = v } }
	s1 := func(v float64, o2 bool) func(*rules.NEWS2Input) {
		return func(in *rules.NEWS2Input) { in.SpO2, in.SpO2Scale, in.OnOxygen = v, 1, o2 }
	}
	s2 := func(v float64, o2 bool) func(*rules.NEWS2Input) {
		return func(in *rules.NEWS2Input) { in.SpO2, in.SpO2Scale, in.OnOxygen = v, 2, o2 }
	}
	sbp := func(v float64) func(*rules.NEWS2Input) { return func(in *rules.NEWS2Input) { in.SystolicBP = v } }
	hr := func(v float64) func(*rules.NEWS2Input) { return func(in *rules.NEWS2Input) { in.Pulse = v } }
	cns := func(v int) func(*rules.NEWS2Input) { return func(in *rules.NEWS2Input) { in.Consciousness = v } }
	temp := func(v float64) func(*rules.NEWS2Input) { return func(in *rules.NEWS2Input) { in.Temperature = v } }
	cases := map[string]tc{
		"rr 5": {pRR, rr(5), 3, 0}, "rr 8": {pRR, rr(8), 3, 0}, "rr 9": {pRR, rr(9), 1, 0}, "rr 11": {pRR, rr(11), 1, 0},
		"rr 12": {pRR, rr(12), 0, 0}, "rr 20": {pRR, rr(20), 0, 0}, "rr 21": {pRR, rr(21), 2, 0}, "rr 24": {pRR, rr(24), 2, 0},
		"rr 25": {pRR, rr(25), 3, 0}, "rr 40": {pRR, rr(40), 3, 0}, "rr 20.4 rounds to 20": {pRR, rr(20.4), 0, 0},
		"rr 20.5 rounds to 21": {pRR, rr(20.5), 2, 0},

		"scale1 85": {pSpO2, s1(85, false), 3, 0}, "scale1 91": {pSpO2, s1(91, false), 3, 0},
		"scale1 92": {pSpO2, s1(92, false), 2, 0}, "scale1 93": {pSpO2, s1(93, false), 2, 0},
		"scale1 94": {pSpO2, s1(94, false), 1, 0}, "scale1 95": {pSpO2, s1(95, false), 1, 0},
		"scale1 96": {pSpO2, s1(96, false), 0, 0}, "scale1 100": {pSpO2, s1(100, false), 0, 0},
		"scale1 98 on oxygen": {pSpO2, s1(98, true), 0, 2}, "scale1 0 means scale 1": {pSpO2, func(in *rules.NEWS2Input) { in.SpO2, in.SpO2Scale = 93, 0 }, 2, 0},

		"scale2 80 air": {pSpO2, s2(80, false), 3, 0}, "scale2 83 air": {pSpO2, s2(83, false), 3, 0},
		"scale2 84 air": {pSpO2, s2(84, false), 2, 0}, "scale2 85 air": {pSpO2, s2(85, false), 2, 0},
		"scale2 86 air": {pSpO2, s2(86, false), 1, 0}, "scale2 87 air": {pSpO2, s2(87, false), 1, 0},
		"scale2 88 air": {pSpO2, s2(88, false), 0, 0}, "scale2 92 air": {pSpO2, s2(92, false), 0, 0},
		"scale2 93 air": {pSpO2, s2(93, false), 0, 0}, "scale2 99 air": {pSpO2, s2(99, false), 0, 0},
		"scale2 83 oxygen": {pSpO2, s2(83, true), 3, 2}, "scale2 84 oxygen": {pSpO2, s2(84, true), 2, 2},
		"scale2 86 oxygen": {pSpO2, s2(86, true), 1, 2}, "scale2 88 oxygen": {pSpO2, s2(88, true), 0, 2},
		"scale2 92 oxygen": {pSpO2, s2(92, true), 0, 2}, "scale2 93 oxygen": {pSpO2, s2(93, true), 1, 2},
		"scale2 94 oxygen": {pSpO2, s2(94, true), 1, 2}, "scale2 95 oxygen": {pSpO2, s2(95, true), 2, 2},
		"scale2 96 oxygen": {pSpO2, s2(96, true), 2, 2}, "scale2 97 oxygen": {pSpO2, s2(97, true), 3, 2},
		"scale2 100 oxygen": {pSpO2, s2(100, true), 3, 2},

		"air":    {pO2, func(in *rules.NEWS2Input) { in.OnOxygen = false }, 0, 0},
		"oxygen": {pO2, func(in *rules.NEWS2Input) { in.OnOxygen = true }, 2, 0},

		"sbp 70": {pSBP, sbp(70), 3, 0}, "sbp 90": {pSBP, sbp(90), 3, 0}, "sbp 91": {pSBP, sbp(91), 2, 0},
		"sbp 100": {pSBP, sbp(100), 2, 0}, "sbp 101": {pSBP, sbp(101), 1, 0}, "sbp 110": {pSBP, sbp(110), 1, 0},
		"sbp 111": {pSBP, sbp(111), 0, 0}, "sbp 219": {pSBP, sbp(219), 0, 0}, "sbp 220": {pSBP, sbp(220), 3, 0},
		"sbp 250": {pSBP, sbp(250), 3, 0},

		"hr 30": {pHR, hr(30), 3, 0}, "hr 40": {pHR, hr(40), 3, 0}, "hr 41": {pHR, hr(41), 1, 0},
		"hr 50": {pHR, hr(50), 1, 0}, "hr 51": {pHR, hr(51), 0, 0}, "hr 90": {pHR, hr(90), 0, 0},
		"hr 91": {pHR, hr(91), 1, 0}, "hr 110": {pHR, hr(110), 1, 0}, "hr 111": {pHR, hr(111), 2, 0},
		"hr 130": {pHR, hr(130), 2, 0}, "hr 131": {pHR, hr(131), 3, 0}, "hr 180": {pHR, hr(180), 3, 0},
		"hr 90.4 rounds to 90": {pHR, hr(90.4), 0, 0},

		"alert": {pACVPU, cns(rules.ACVPUAlert), 0, 0}, "new confusion": {pACVPU, cns(rules.ACVPUConfusion), 3, 0},
		"voice": {pACVPU, cns(rules.ACVPUVoice), 3, 0}, "pain": {pACVPU, cns(rules.ACVPUPain), 3, 0},
		"unresponsive": {pACVPU, cns(rules.ACVPUUnresponsive), 3, 0},

		"temp 34.0": {pTemp, temp(34.0), 3, 0}, "temp 35.0": {pTemp, temp(35.0), 3, 0}, "temp 35.1": {pTemp, temp(35.1), 1, 0},
		"temp 36.0": {pTemp, temp(36.0), 1, 0}, "temp 36.1": {pTemp, temp(36.1), 0, 0}, "temp 38.0": {pTemp, temp(38.0), 0, 0},
		"temp 38.1": {pTemp, temp(38.1), 1, 0}, "temp 39.0": {pTemp, temp(39.0), 1, 0}, "temp 39.1": {pTemp, temp(39.1), 2, 0},
		"temp 41.0": {pTemp, temp(41.0), 2, 0}, "temp 36.04 rounds to 36.0": {pTemp, temp(36.04), 1, 0},
		"temp 38.05 rounds to 38.1": {pTemp, temp(38.05), 1, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			in := normal()
			c.set(&in)
			got, err := rules.ComputeNEWS2(in)
			if err != nil {
				t.Fatalf("ComputeNEWS2(%+v) error %v", in, err)
			}
			if component(got, c.p) != c.score {
				t.Errorf("ComputeNEWS2(%+v) component = %d, want %d (%+v)", in, component(got, c.p), c.score, got)
			}
			want := c.score + c.extraO
			if c.p == pO2 {
				want = c.score
			}
			if got.Total != want {
				t.Errorf("ComputeNEWS2(%+v).Total = %d, want %d", in, got.Total, want)
			}
			wantBand := rules.BandLow
			switch {
			case want >= 7:
				wantBand = rules.BandHigh
			case want >= 5:
				wantBand = rules.BandMedium
			case c.score == 3:
				wantBand = rules.BandLowMedium
			}
			if got.Band != wantBand || got.SingleRed != (c.score == 3) {
				t.Errorf("ComputeNEWS2(%+v) band %s red %v, want %s red %v", in, got.Band, got.SingleRed, wantBand, c.score == 3)
			}
		})
	}
}

// Aggregate scores and the response bands, including the single-parameter-3 trigger.
// Verifies: REQ-CORE-100, REQ-CORE-101
func TestNEWS2Aggregate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		in    rules.NEWS2Input
		total int
		band  rules.Band
	}{
		{"all normal", normal(), 0, rules.BandLow},
		{"4 without red", func() rules.NEWS2Input { in := normal(); in.RespRate, in.Pulse = 21, 111; return in }(), 4, rules.BandLow},
		{"3 from one red", func() rules.NEWS2Input { in := normal(); in.Consciousness = rules.ACVPUConfusion; return in }(), 3, rules.BandLowMedium},
		{"4 with one red", func() rules.NEWS2Input { in := normal(); in.SystolicBP, in.Temperature = 85, 38.5; return in }(), 4, rules.BandLowMedium},
		{"5 medium", func() rules.NEWS2Input {
			in := normal()
			in.RespRate, in.Pulse, in.Temperature = 21, 111, 38.5
			return in
		}(), 5, rules.BandMedium},
		{"5 with a red is medium", func() rules.NEWS2Input {
			in := normal()
			in.Consciousness, in.RespRate = rules.ACVPUVoice, 22
			return in
		}(), 5, rules.BandMedium},
		{"6 medium", func() rules.NEWS2Input {
			in := normal()
			in.RespRate, in.Pulse, in.Temperature, in.SpO2 = 21, 111, 38.5, 95
			return in
		}(), 6, rules.BandMedium},
		{"7 high", func() rules.NEWS2Input {
			in := normal()
			in.RespRate, in.Pulse, in.Temperature, in.OnOxygen = 21, 111, 38.5, true
			return in
		}(), 7, rules.BandHigh},
		{"deteriorating on oxygen", rules.NEWS2Input{RespRate: 24, SpO2: 93, SpO2Scale: 1, OnOxygen: true, SystolicBP: 105,
			Pulse: 115, Consciousness: rules.ACVPUAlert, Temperature: 38.4}, 10, rules.BandHigh},
		{"scale 2 target range on oxygen", rules.NEWS2Input{RespRate: 18, SpO2: 90, SpO2Scale: 2, OnOxygen: true, SystolicBP: 130,
			Pulse: 80, Consciousness: rules.ACVPUAlert, Temperature: 37}, 2, rules.BandLow},
		{"scale 2 over-oxygenated", rules.NEWS2Input{RespRate: 18, SpO2: 98, SpO2Scale: 2, OnOxygen: true, SystolicBP: 130,
			Pulse: 80, Consciousness: rules.ACVPUAlert, Temperature: 37}, 5, rules.BandMedium},
		{"maximum", rules.NEWS2Input{RespRate: 30, SpO2: 80, SpO2Scale: 1, OnOxygen: true, SystolicBP: 80, Pulse: 150,
			Consciousness: rules.ACVPUUnresponsive, Temperature: 34}, 20, rules.BandHigh},
	}
	for _, c := range cases {
		got, err := rules.ComputeNEWS2(c.in)
		if err != nil {
			t.Fatalf("%s: ComputeNEWS2() error %v", c.name, err)
		}
		if got.Total != c.total || got.Band != c.band {
			t.Errorf("%s: ComputeNEWS2(%+v) = %d %s, want %d %s", c.name, c.in, got.Total, got.Band, c.total, c.band)
		}
	}
	for i, in := range []rules.NEWS2Input{
		func() rules.NEWS2Input { in := normal(); in.SpO2Scale = 3; return in }(),
		func() rules.NEWS2Input { in := normal(); in.Consciousness = 5; return in }(),
		func() rules.NEWS2Input { in := normal(); in.Consciousness = -1; return in }(),
		func() rules.NEWS2Input { in := normal(); in.Pulse = math.NaN(); return in }(),
		func() rules.NEWS2Input { in := normal(); in.Temperature = math.Inf(1); return in }(),
	} {
		if _, err := rules.ComputeNEWS2(in); !errors.Is(err, rules.ErrInvalidRule) {
			t.Errorf("case %d: ComputeNEWS2(%+v) error %v, want ErrInvalidRule", i, in, err)
		}
	}
}

// FuzzNEWS2 checks that no input panics and every score is within 0..20 with consistent parts.
// Verifies: REQ-CORE-100
func FuzzNEWS2(f *testing.F) {
	f.Add(16.0, 97.0, 1, false, 120.0, 70.0, 0, 37.0)
	f.Add(30.0, 80.0, 2, true, 80.0, 150.0, 4, 34.0)
	f.Fuzz(func(t *testing.T, rr, spo2 float64, scale int, o2 bool, sbp, hr float64, c int, temp float64) {
		s, err := rules.ComputeNEWS2(rules.NEWS2Input{RespRate: rr, SpO2: spo2, SpO2Scale: scale, OnOxygen: o2,
			SystolicBP: sbp, Pulse: hr, Consciousness: c, Temperature: temp})
		if err != nil {
			return
		}
		sum := s.RespRate + s.SpO2 + s.AirOrOxygen + s.SystolicBP + s.Pulse + s.Consciousness + s.Temperature
		if s.Total != sum || s.Total < 0 || s.Total > 20 {
			t.Fatalf("ComputeNEWS2 total %d, parts sum %d", s.Total, sum)
		}
		_ = fmt.Sprint(s)
	})
}
