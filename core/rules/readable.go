package rules

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vigilhealth/vigil/core/alarms"
)

// Readable is what a clinician reads of an alarm, in words and human units: the rule's name,
// the priority, the limit, and the measured values (for NEWS2 each parameter with its value
// and its points). It is rendered from the alarm's stored detail, which stays the machine
// form (UCUM units, band codes); nothing in Readable is a code or a Go name. It holds no
// patient identity.
type Readable struct {
	Rule     string        `json:"rule"`            // the rule's name: "Heart rate high"
	Priority string        `json:"priority"`        // "critical priority", "high priority", …
	State    string        `json:"state"`           // "active", "acknowledged" or "resolved", in words
	Summary  string        `json:"summary"`         // the alarm's current message
	Limit    string        `json:"limit,omitempty"` // "above 140/min" (threshold rules)
	Measured []Measurement `json:"measured,omitempty"`
	// NEWS2 is set for NEWS2 alarms: the score, its response in words, and what was missing.
	NEWS2 *ReadableNEWS2 `json:"news2,omitempty"`
	// Notes are caveats a clinician must see: "oxygen not reported, scored as air", "late
	// samples", "stamped ahead of the server clock".
	Notes []string `json:"notes,omitempty"`
}

// Measurement is one measured value as charted.
type Measurement struct {
	Parameter string     `json:"parameter"`        // "Respiration rate", "SpO2", "Temperature", …
	Value     float64    `json:"value"`            // in the unit below
	Unit      string     `json:"unit"`             // human unit: "/min", "%", "°C", "mmHg", "L/min" ("" for a level)
	Text      string     `json:"text"`             // "38.5 °C", "alert", "150/min"
	Points    *int       `json:"points,omitempty"` // NEWS2: the points this parameter scored
	At        *time.Time `json:"at,omitempty"`
}

// ReadableNEWS2 is a NEWS2 result in words.
type ReadableNEWS2 struct {
	Total    int      `json:"total"`
	AtLeast  bool     `json:"at_least"` // partial: the total is a lower bound
	Response string   `json:"response"` // "low", "low–medium (a single parameter scored 3)", "medium", "high" clinical response
	Missing  []string `json:"missing,omitempty"`
	Scale    string   `json:"spo2_scale"` // "SpO2 scale 1" or "SpO2 scale 2 (hypercapnic respiratory failure)"
}

// paramWords names the observation codes and NEWS2 parameters as a chart does.
var paramWords = map[string]string{
	CodeRespiratoryRate: "Respiration rate", CodeSpO2: "SpO2", CodeSpO2Arterial: "SaO2 (arterial)",
	CodeInhaledO2Conc: "Inhaled oxygen (FiO2)", CodeInhaledO2Flow: "Oxygen flow", CodeSystolicBP: "Systolic blood pressure",
	CodeDiastolicBP: "Diastolic blood pressure", CodeHeartRate: "Heart rate", CodeBodyTemperature: "Temperature",
	CodeConsciousness: "Consciousness (ACVPU)", CodeNEWS2: "NEWS2",
	"resp_rate": "Respiration rate", "spo2": "SpO2", "systolic_bp": "Systolic blood pressure", "pulse": "Pulse",
	"temperature": "Temperature", "consciousness": "Consciousness (ACVPU)", "oxygen": "Air or oxygen",
	"fio2": "Inhaled oxygen (FiO2)", "o2_flow": "Oxygen flow",
}

// news2Units are the human units of the NEWS2 values, by chart name.
var news2Units = map[string]string{"resp_rate": "/min", "spo2": "%", "systolic_bp": "mmHg", "pulse": "/min",
	"temperature": "°C", "fio2": "%", "o2_flow": "L/min", "consciousness": ""}

var acvpuWords = [...]string{"alert", "new confusion", "responds to voice", "responds to pain", "unresponsive"}

var stateWords = map[alarms.State]string{alarms.StateActive: "active (not acknowledged)",
	alarms.StateAcknowledged: "acknowledged", alarms.StateResolved: "resolved"}

// humanText writes v with the human unit of the UCUM unit ucum.
func humanText(v float64, ucum string) string { return fmtValue(v) + HumanUnit(ucum) }

// Explain renders an alarm for a clinician (see Readable). The rule's name is the current
// version's; an alarm of a rule since deleted or of an unknown kind keeps its id as name.
func (e *Engine) Explain(a alarms.Alarm) Readable {
	name := a.RuleID
	base := strings.TrimSuffix(a.RuleID, "-incomplete")
	e.st.mu.Lock()
	r, ok := e.st.current[base]
	e.st.mu.Unlock()
	if a.RuleID == LateDataRule {
		name = "Late samples not evaluated"
	} else if ok {
		name = r.Name
		if base != a.RuleID {
			name += " incomplete"
		}
	}
	return explain(a, name)
}

func explain(a alarms.Alarm, ruleName string) Readable {
	out := Readable{Rule: ruleName, Priority: a.Severity.String() + " priority", State: stateWords[a.State], Summary: a.Message}
	if out.State == "" {
		out.State = string(a.State)
	}
	if len(a.Detail) == 0 {
		return out
	}
	var d struct {
		Code        string      `json:"code"`
		Value       *float64    `json:"value"`
		Unit        string      `json:"unit"`
		At          *time.Time  `json:"at"`
		Limit       *float64    `json:"limit"`
		Direction   string      `json:"direction"`
		Change      *float64    `json:"change"`
		Window      string      `json:"window"`
		Z           *float64    `json:"z"`
		Mean        *float64    `json:"baseline_mean"`
		NEWS2       *NEWS2Score `json:"news2"`
		Missing     []string    `json:"missing"`
		LastSeen    *time.Time  `json:"last_seen"`
		Late        bool        `json:"late_samples"`
		ClampedFrom *time.Time  `json:"clamped_from"`
	}
	if json.Unmarshal(a.Detail, &d) != nil {
		return out
	}
	if d.Value != nil && d.Code != "" {
		m := Measurement{Parameter: paramWords[d.Code], Value: *d.Value, Unit: strings.TrimSpace(HumanUnit(d.Unit)),
			Text: humanText(*d.Value, d.Unit), At: d.At}
		if m.Parameter == "" {
			m.Parameter = d.Code
		}
		out.Measured = append(out.Measured, m)
	}
	switch {
	case d.Limit != nil:
		dir := "above"
		if d.Direction == string(Below) {
			dir = "below"
		}
		out.Limit = dir + " " + humanText(*d.Limit, d.Unit)
	case d.Change != nil:
		out.Notes = append(out.Notes, fmt.Sprintf("changed by %s within %s", humanText(*d.Change, d.Unit), d.Window))
	case d.Z != nil && d.Mean != nil:
		out.Notes = append(out.Notes, fmt.Sprintf("%.1f standard deviations from this patient's baseline of %s", *d.Z, humanText(*d.Mean, d.Unit)))
	case d.LastSeen != nil:
		out.Notes = append(out.Notes, "nothing received since "+d.LastSeen.UTC().Format(time.RFC3339))
	}
	if len(d.Missing) > 0 && d.NEWS2 == nil { // the incomplete condition
		out.Notes = append(out.Notes, "no current "+strings.Join(wordList(d.Missing), ", "))
	}
	if s := d.NEWS2; s != nil {
		out.NEWS2, out.Measured = readableNEWS2(*s), append(out.Measured, news2Measured(*s, d.At)...)
		if s.AssumedAir {
			out.Notes = append(out.Notes, "oxygen not reported, scored as air")
		}
		if s.AssumedAlert {
			out.Notes = append(out.Notes, "consciousness not reported, scored as alert")
		}
		if s.OxygenDocumented {
			out.Notes = append(out.Notes, "oxygen not reported, scored as oxygen as documented")
		}
	}
	if d.Late {
		out.Notes = append(out.Notes, "raised from samples that arrived late")
	}
	if d.ClampedFrom != nil {
		out.Notes = append(out.Notes, "the sample was stamped ahead of the server clock ("+d.ClampedFrom.UTC().Format(time.RFC3339)+"); evaluated at the time it arrived")
	}
	return out
}

// phraseList is wordList for the middle of a sentence: "respiration rate, SpO2".
func phraseList(names []string) string {
	ws := wordList(names)
	for i, w := range ws {
		if w != "" && !strings.HasPrefix(w, "SpO2") && !strings.HasPrefix(w, "SaO2") {
			ws[i] = strings.ToLower(w[:1]) + w[1:]
		}
	}
	return strings.Join(ws, ", ")
}

func wordList(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		if w, ok := paramWords[n]; ok {
			out[i] = w
		} else {
			out[i] = n
		}
	}
	return out
}

func readableNEWS2(s NEWS2Score) *ReadableNEWS2 {
	r := &ReadableNEWS2{Total: s.Total, AtLeast: s.Partial, Response: bandWords[s.Band] + " clinical response",
		Missing: wordList(s.Missing), Scale: "SpO2 scale 1"}
	if s.SpO2Scale == 2 {
		r.Scale = "SpO2 scale 2 (hypercapnic respiratory failure)"
	}
	if bandWords[s.Band] == "" {
		r.Response = "unknown"
	}
	return r
}

// news2Measured lists a score's measured values with their points, in the order of the RCP
// chart (then oxygen delivery).
func news2Measured(s NEWS2Score, at *time.Time) []Measurement {
	points := map[string]int{"resp_rate": s.RespRate, "spo2": s.SpO2, "systolic_bp": s.SystolicBP, "pulse": s.Pulse,
		"temperature": s.Temperature, "consciousness": s.Consciousness}
	order := []string{"resp_rate", "spo2", "fio2", "o2_flow", "systolic_bp", "pulse", "consciousness", "temperature"}
	var out []Measurement
	seen := map[string]bool{}
	add := func(name string, v float64) {
		seen[name] = true
		m := Measurement{Parameter: paramWords[name], Value: v, Unit: news2Units[name], At: at}
		if p, ok := points[name]; ok {
			p := p
			m.Points = &p
		}
		if name == "fio2" || name == "o2_flow" {
			p := s.AirOrOxygen
			m.Points = &p
		}
		switch {
		case name == "consciousness":
			if i := int(v); float64(i) == v && i >= 0 && i < len(acvpuWords) {
				m.Text = acvpuWords[i]
			} else {
				m.Text = fmtValue(v)
			}
		case m.Unit == "/min":
			m.Text = fmtValue(v) + "/min"
		default:
			m.Text = strings.TrimSpace(fmtValue(v) + " " + m.Unit)
		}
		out = append(out, m)
	}
	for _, name := range order {
		if v, ok := s.Values[name]; ok {
			add(name, v)
		}
	}
	var rest []string
	for name := range s.Values {
		if !seen[name] {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	for _, name := range rest {
		add(name, s.Values[name])
	}
	return out
}
