package main

// The release's use of the audit chain, kept in this one file: recording release.signed
// with its proof (qms.ReleaseLog) and checking that proof offline (qms.ProofChecker).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"log/slog"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/leaf"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/qms"
)

// releaseProof is the audit proof document of a release (AuditEvidence.Proof): the event
// with its two-step proof, and the salt and plaintext that open the event's commitments to
// its payload and object id, so the manifest digest can be checked against the log.
type releaseProof struct {
	Event    chain.EventProof `json:"event"`
	Salt     []byte           `json:"salt"`
	Payload  string           `json:"payload"` // the exact JSON text the commitment covers
	ObjectID string           `json:"object_id"`
}

type releasePayload struct {
	Product        string `json:"product"`
	Version        string `json:"version"`
	Commit         string `json:"commit"`
	KeyID          string `json:"key_id"`
	ManifestSHA256 string `json:"manifest_sha256"`
}

// openReleaseAudit opens the audit chain for `vigil release`: with the embedded Trillian's
// sequencer (the release must reach the log even when no server runs) but with idle workers,
// which auditReleaseLog drives itself until the release event is proven.
func openReleaseAudit(ctx context.Context, rc runConfig, db *database, ring *keys.Ring) (*chain.Service, func(context.Context) error, error) {
	signer, err := ring.Signer(ctx, keys.AuditCheckpoint)
	if err != nil {
		return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: db.pool, Recorder: db.rec, Backlog: db.rec, DatabaseURL: rc.DatabaseURL, TrillianAddr: rc.TrillianAddr,
		Signer: signer, SequencerInterval: 50 * time.Millisecond, Logger: slog.Default()})
	if err != nil {
		return nil, nil, err
	}
	return svc, svc.Close, nil
}

// auditReleaseLog records releases through an audit service whose workers it drives itself
// (opened with chain.OpenIdle).
type auditReleaseLog struct {
	svc     *chain.Service
	rec     audit.Recorder
	timeout time.Duration // how long to wait for the proof; default 2 minutes
}

func (l auditReleaseLog) RecordRelease(ctx context.Context, r qms.ReleaseRecord) (qms.AuditEvidence, error) {
	obj := r.Product + "@" + r.Version
	id, err := l.rec.RecordNow(ctx, audit.Event{Actor: cliActor(), Action: qms.ReleaseAction, Object: audit.Object{Type: "release", ID: obj},
		Outcome: audit.OutcomeSuccess, Payload: releasePayload{Product: r.Product, Version: r.Version, Commit: r.Commit, KeyID: r.KeyID, ManifestSHA256: r.ManifestSHA256}})
	if err != nil {
		return qms.AuditEvidence{}, err
	}
	timeout := l.timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var p chain.EventProof
	for {
		if _, err := l.svc.Shipper().Step(ctx); err != nil && ctx.Err() == nil {
			return qms.AuditEvidence{}, fmt.Errorf("ship the release event: %w", err)
		}
		if _, err := l.svc.CheckpointNow(ctx); err != nil && !errors.Is(err, chain.ErrNoCheckpoint) && ctx.Err() == nil {
			return qms.AuditEvidence{}, fmt.Errorf("checkpoint: %w", err)
		}
		if p, err = l.svc.Event(ctx, id); err != nil {
			return qms.AuditEvidence{}, err
		}
		if p.Status == "proven" {
			break
		}
		select {
		case <-ctx.Done():
			return qms.AuditEvidence{}, fmt.Errorf("release event %s not proven in the log after %s (status %s): %w", id, timeout, p.Status, ctx.Err())
		case <-time.After(50 * time.Millisecond): // waiting for Trillian's sequencer
		}
	}
	doc, err := json.Marshal(releaseProof{Event: p, Salt: p.Event.Salt, Payload: string(p.Event.Payload), ObjectID: obj})
	if err != nil {
		return qms.AuditEvidence{}, err
	}
	return qms.AuditEvidence{EventID: id.String(), Action: qms.ReleaseAction, Origin: l.svc.Origin(), VerifierKey: l.svc.VerifierKey(),
		LeafIndex: uint64(*p.Batch.LeafIndex), TreeSize: p.Batch.TreeSize, Checkpoint: p.Batch.Checkpoint, Proof: doc}, nil
}

// checkReleaseProof is the qms.ProofChecker of the audit chain.
func checkReleaseProof(ev qms.AuditEvidence, manifestSHA256, trustedKey string) error {
	var doc releaseProof
	if err := json.Unmarshal(ev.Proof, &doc); err != nil {
		return fmt.Errorf("proof document: %w", err)
	}
	le, err := chain.VerifyEventProof(doc.Event, trustedKey)
	if err != nil {
		return err
	}
	switch {
	case le.Action != qms.ReleaseAction:
		return fmt.Errorf("the proven event is %q, not %s", le.Action, qms.ReleaseAction)
	case uuid.UUID(le.ID).String() != ev.EventID:
		return fmt.Errorf("the proven event is %s, not %s", uuid.UUID(le.ID), ev.EventID)
	case doc.Event.Batch.Checkpoint != ev.Checkpoint || uint64(*doc.Event.Batch.LeafIndex) != ev.LeafIndex || doc.Event.Batch.TreeSize != ev.TreeSize:
		return errors.New("the checkpoint or leaf shown is not the one the proof is for")
	case audit.PayloadCommitment(doc.Salt, []byte(doc.Payload)) != le.PayloadHash:
		return errors.New("the payload does not open the event's commitment")
	case leaf.Commit(doc.Salt, leaf.LabelObjectID, []byte(doc.ObjectID)) != le.ObjectID:
		return errors.New("the object id does not open the event's commitment")
	}
	var p releasePayload
	if err := json.Unmarshal([]byte(doc.Payload), &p); err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	if p.ManifestSHA256 != manifestSHA256 {
		return fmt.Errorf("the log records manifest %s, this manifest is %s", p.ManifestSHA256, manifestSHA256)
	}
	return nil
}
