package main

// The human audit reports of `vigil audit export` (--report, --patient): the audit data is
// turned into qms/auditreport's plain input here, so the rendering does not depend on the
// audit package's types.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/qms/auditreport"
)

// writePackReport verifies an exported pack offline and writes its report into dir.
func writePackReport(dir string, pack []byte, now time.Time) (string, string, error) {
	in := auditreport.Input{Title: "Audit report", Generated: now}
	rep, err := chain.VerifyPack(pack, "")
	if err != nil {
		in.Result = err.Error()
		return auditreport.Write(dir, "audit-report", in)
	}
	in.Installation, in.VerifierKey, in.From, in.To = rep.Origin, rep.VerifierKey, rep.From, rep.To
	in.TreeSize, in.Checkpoints, in.Pending = rep.TreeSize, rep.Checkpoints, rep.Pending
	in.Verified = true
	in.Result = fmt.Sprintf("every event is proven under the signed checkpoint; %d checkpoints consistent; pack signature valid (key shown below: compare it with the published one)", rep.Checkpoints)
	var p chain.Pack
	if nl := indexByte(pack, '\n'); nl > 0 && json.Unmarshal(pack[:nl], &p) == nil && len(p.Checkpoints) > 0 {
		in.Checkpoint = p.Checkpoints[len(p.Checkpoints)-1].Note
	}
	for _, e := range rep.Events {
		in.Events = append(in.Events, auditreport.Event{ID: e.ID, Time: e.Time, ActorKind: e.ActorKind, ActorID: e.ActorID, ActorAuth: e.ActorAuth,
			Action: e.Action, ObjectType: e.ObjectType, ObjectID: e.ObjectID, Outcome: e.Outcome, Reason: e.Reason, LeafIndex: e.LeafIndex, Proof: "verified"})
	}
	return auditreport.Write(dir, "audit-report", in)
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// writePatientReport reports every event of [from, to) whose object is the patient (HIPAA
// accounting of disclosures), each with its proof checked against the latest checkpoint, and
// writes the proofs beside the report (patient-<id>-proofs.json).
func writePatientReport(ctx context.Context, svc *chain.Service, dir, patient string, from, to, now time.Time) (string, string, int, error) {
	in := auditreport.Input{Title: "Access history of patient " + patient, Installation: svc.Origin(), VerifierKey: svc.VerifierKey(),
		From: from, To: to, Patient: patient, Generated: now, Verified: true}
	var proofs []chain.EventProof
	f := chain.EventFilter{ObjectType: "patient", ObjectID: patient, From: from, To: to, Limit: 1000}
	for {
		page, err := svc.Events(ctx, f)
		if err != nil {
			return "", "", 0, err
		}
		for _, se := range page.Events {
			p, err := svc.Event(ctx, se.ID)
			if err != nil {
				return "", "", 0, err
			}
			e := auditreport.Event{ID: se.ID.String(), Time: se.Time, ActorKind: se.ActorKind, ActorID: deref(se.ActorID), ActorAuth: se.ActorAuth,
				Action: se.Action, ObjectType: se.ObjectType, ObjectID: deref(se.ObjectID), Outcome: se.Outcome, Reason: se.Reason}
			switch _, verr := chain.VerifyEventProof(p, svc.VerifierKey()); {
			case verr == nil:
				e.Proof, e.LeafIndex = "verified", uint64(*p.Batch.LeafIndex)
				in.Checkpoint, in.TreeSize = p.Batch.Checkpoint, p.Batch.TreeSize
			case p.Status != "proven":
				e.Proof = "pending: " + p.Status
				in.Pending++
			default:
				e.Proof, in.Verified = "FAILED: "+verr.Error(), false
			}
			proofs = append(proofs, p)
			in.Events = append(in.Events, e)
		}
		if page.NextCursor == "" {
			break
		}
		f.Cursor = page.NextCursor
	}
	// Oldest first, as a history reads.
	for i, j := 0, len(in.Events)-1; i < j; i, j = i+1, j-1 {
		in.Events[i], in.Events[j] = in.Events[j], in.Events[i]
	}
	in.Result = fmt.Sprintf("%d events, each proven under the signed checkpoint", len(in.Events)-in.Pending)
	if !in.Verified {
		in.Result = "some events do not verify (see the proof column)"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", 0, err
	}
	b, err := json.MarshalIndent(proofs, "", "  ")
	if err != nil {
		return "", "", 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "patient-"+filepath.Base(patient)+"-proofs.json"), b, 0o600); err != nil {
		return "", "", 0, err
	}
	h, p, err := auditreport.Write(dir, "patient-"+filepath.Base(patient), in)
	return h, p, len(in.Events), err
}
