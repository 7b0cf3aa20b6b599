package portal

import (
	"context"
	"fmt"

	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/auth"
)

// The care teams section of the administration page: for each patient of the viewer's wards
// and care teams whose care team the policy lets them read (care_team read: clinicians and
// charge nurses, on their wards), who is on the team, in what role, since when. Care teams
// name patients, so the section is for clinical roles only, and each team shown is recorded
// as a read of the patient's data (access.phi.read, what: care_team).

type careTeamView struct {
	Ward, Patient, MRN string
	PatientID          string
	MayManage          bool                  // care_team manage on this patient: the add and remove forms
	Form               careTeamForm          // a refused form's values (this patient's only)
	Errs               map[string]*formError // a refused form's errors (this patient's only)
	Members            []careTeamMemberView
}

type careTeamMemberView struct {
	ID, Name, Role, Since string
}

// mayReadCareTeams reports whether the viewer sees any patient (a clinical role).
func (p *Portal) mayReadCareTeams(pr *auth.Principal) bool {
	f, err := p.cfg.Auth.Enforcer().Visibility(pr)
	return err == nil && !f.None()
}

func (p *Portal) careTeamViews(ctx context.Context, c echo.Context, pr *auth.Principal, names func(string, *string) (string, bool)) ([]careTeamView, error) {
	groups, err := p.visiblePatients(ctx, pr)
	if err != nil {
		return nil, err
	}
	var out []careTeamView
	var reads []phiRead
	for _, g := range groups {
		for _, t := range g.Tiles {
			team, err := p.cfg.Core.CareTeam(ctx, t.PatientID)
			if err != nil {
				return nil, err
			}
			target := auth.Target{Object: auth.ObjCareTeam, Patient: t.PatientID}
			if t.patient.WardID != nil {
				target.Ward = *t.patient.WardID
			}
			for _, m := range team {
				target.CareTeam = append(target.CareTeam, m.ClinicianID)
			}
			d, err := p.cfg.Auth.Enforcer().Allow(pr, "read", target)
			if err != nil {
				continue // not this patient's team (the policy decides, not the list)
			}
			_, merr := p.cfg.Auth.Enforcer().Allow(pr, "manage", target)
			v := careTeamView{Ward: g.Name, Patient: t.Name, MRN: t.MRN, PatientID: t.PatientID.String(), MayManage: merr == nil}
			for _, m := range team {
				id := m.ClinicianID
				n, _ := names("user", &id)
				v.Members = append(v.Members, careTeamMemberView{ID: id, Name: n, Role: m.Role, Since: m.AddedAt.UTC().Format("2006-01-02")})
			}
			out = append(out, v)
			reads = append(reads, phiRead{patient: t.PatientID.String(), what: "care_team", decision: d})
		}
	}
	if err := p.auditReads(ctx, c, pr, reads); err != nil {
		return nil, fmt.Errorf("care teams: %w", err)
	}
	return out, nil
}
