package sim

import (
	"testing"

	"github.com/vigilhealth/vigil/core"
)

// Same seed, same readings; another seed, other readings.
// Verifies: REQ-DEV-120
func TestPatientDeterministic(t *testing.T) {
	t.Parallel()
	series := func(seed uint64) []Vitals {
		p := NewPatient(seed, 3, Sepsis)
		var out []Vitals
		for i := 0; i < 50; i++ {
			out = append(out, p.Next(float64(i)/50))
		}
		return out
	}
	a, b, c := series(42), series(42), series(43)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("tick %d: seed 42 gave %+v then %+v, want identical", i, a[i], b[i])
		}
	}
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same == len(a) {
		t.Errorf("seeds 42 and 43 gave identical series, want different")
	}
}

// Each scenario, once developed, reaches the state that makes its rule fire, and stable
// patients stay quiet; every value is one core accepts (a known code, an accepted unit, a
// possible value), and only the artefact scenario produces implausible ones.
// Verifies: REQ-DEV-121
func TestScenariosDriveRules(t *testing.T) {
	t.Parallel()
	for _, sc := range Scenarios {
		t.Run(string(sc), func(t *testing.T) {
			maxNEWS, minHR, maxHR, implausible := 0, 1000.0, 0.0, 0
			for pi := 0; pi < 20; pi++ {
				p := NewPatient(7, pi, sc)
				for tick := 0; tick < 200; tick++ {
					v := p.Next(float64(tick) / 100) // fully developed from tick 100 on
					for _, s := range v.Samples() {
						info, ok := core.LookupCode(s.Code)
						if !ok {
							t.Fatalf("code %s unknown to core", s.Code)
						}
						cv, ok := info.Convert(s.Value, s.Unit)
						if !ok {
							t.Fatalf("unit %q of %s not accepted by core", s.Unit, s.Code)
						}
						if !info.Possible.Contains(cv) {
							t.Fatalf("%s = %v is impossible for core", s.Code, cv)
						}
						if !info.Plausible.Contains(cv) {
							implausible++
						}
					}
					if tick < 100 {
						continue
					}
					maxNEWS = max(maxNEWS, NEWS2(v))
					minHR, maxHR = min(minHR, v.HeartRate), max(maxHR, v.HeartRate)
				}
			}
			switch sc {
			case Stable, Offline:
				if maxNEWS > 4 {
					t.Errorf("%s: NEWS2 reached %d, want ≤ 4", sc, maxNEWS)
				}
			case Sepsis, Hypoxia:
				if maxNEWS < 7 {
					t.Errorf("%s: NEWS2 peaked at %d, want ≥ 7 (high clinical risk)", sc, maxNEWS)
				}
			case Bradycardia:
				if minHR > 40 {
					t.Errorf("bradycardia: lowest heart rate %v, want ≤ 40", minHR)
				}
			}
			if (sc == Artifact) != (implausible > 0) {
				t.Errorf("%s: %d implausible readings, want some only for the artefact scenario", sc, implausible)
			}
		})
	}
}

// Verifies: REQ-DEV-120
func TestParseScenarioAndMix(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"stable", "SEPSIS", " hypoxia ", "bradycardia", "artifact", "offline", "mixed"} {
		if _, err := ParseScenario(s); err != nil {
			t.Errorf("ParseScenario(%q) = %v, want ok", s, err)
		}
	}
	if _, err := ParseScenario("zombie"); err == nil {
		t.Errorf("ParseScenario(zombie) = nil error, want error")
	}
	seen := map[Scenario]int{}
	for i := 0; i < 10; i++ {
		seen[ScenarioFor(Mixed, i)]++
	}
	for _, sc := range Scenarios {
		if seen[sc] == 0 {
			t.Errorf("ScenarioFor(Mixed, 0..9) never gives %s", sc)
		}
	}
	if got := ScenarioFor(Hypoxia, 5); got != Hypoxia {
		t.Errorf("ScenarioFor(Hypoxia, 5) = %s, want hypoxia", got)
	}
}
