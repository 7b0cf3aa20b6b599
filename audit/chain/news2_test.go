package chain_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
)

// fixedHistory is the rules engine's history of one evaluation: the observations given.
type fixedHistory []rules.Observation

func (h fixedHistory) ObservationsSince(_ context.Context, p uuid.UUID, since time.Time, _ int) ([]rules.Observation, error) {
	var out []rules.Observation
	for _, o := range h {
		if o.PatientID == p && o.EffectiveAt.After(since) {
			out = append(out, o)
		}
	}
	return out, nil
}

// A NEWS2 score the real rules engine derived verifies; its total lowered in SQL (a
// deterioration hidden after the fact) is a domain_mismatch, and a score inserted in SQL is
// an unaudited change.
// Verifies: REQ-AUD-055
func TestNEWS2ScoresAgainstTheTrail(t *testing.T) {
	t.Parallel()
	r := newDomainRig(t)
	ctx, now := r.env.Ctx, r.env.Clock.Now()
	p := r.env.Patient
	o := func(code, unit string, v float64) rules.Observation {
		return rules.Observation{PatientID: p, DeviceID: "dev-1", Code: code, Value: v, Unit: unit, EffectiveAt: now}
	}
	hist := fixedHistory{o(rules.CodeRespiratoryRate, "/min", 24), o(rules.CodeSpO2, "%", 93), o(rules.CodeInhaledO2Conc, "%", 40),
		o(rules.CodeSystolicBP, "mm[Hg]", 105), o(rules.CodeHeartRate, "/min", 115), o(rules.CodeConsciousness, "{score}", rules.ACVPUConfusion),
		o(rules.CodeBodyTemperature, "Cel", 38.4)}
	al, err := alarms.New(alarms.Config{Pool: r.env.Pool, Recorder: r.env.Rec, Now: r.env.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: r.env.Pool, Recorder: r.env.Rec, Alarms: al, History: hist, Now: r.env.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	res, err := eng.Evaluate(ctx, p, hist)
	if err != nil || len(res.Derived) != 1 || res.Derived[0].NEWS2 == nil || res.Derived[0].NEWS2.Total < 7 {
		t.Fatalf("Evaluate() = %+v, %v; want one high NEWS2", res.Derived, err)
	}
	chaintest.ShipAll(t, r.svc)
	if rep := r.verify(t, false); !rep.OK {
		t.Fatalf("Verify() with a derived NEWS2: findings %s", findings(rep))
	}
	r.exec(t, `UPDATE rules_news2 SET total = 2, band = 'low', components = jsonb_set(jsonb_set(components, '{total}', '2'), '{band}', '"low"')
		WHERE patient_id = $1`, p)
	if rep := r.verify(t, false); !hasFinding(rep, chain.FindingDomainMismatch, "") {
		t.Errorf("Verify() after lowering the NEWS2 total: findings %s, want %s", findings(rep), chain.FindingDomainMismatch)
	}
	r.exec(t, `INSERT INTO rules_news2 (id, patient_id, effective_at, total, band, components, rule_id, rule_version, recorded_at)
		SELECT gen_random_uuid(), patient_id, effective_at + interval '1 minute', total, band, components, rule_id, rule_version, recorded_at
		FROM rules_news2 WHERE patient_id = $1 LIMIT 1`, p)
	if rep := r.verify(t, false); !hasFinding(rep, chain.FindingUnaudited, "") {
		t.Errorf("Verify() after inserting a NEWS2 score: findings %s, want %s", findings(rep), chain.FindingUnaudited)
	}
}
