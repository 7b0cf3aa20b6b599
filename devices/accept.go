package devices

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Verified is an upload that passed every check that does not need a commit: well formed,
// signed by the device's current key, device active, sent_at within skew, sequence number
// above the last admitted one.
type Verified struct {
	Upload *envelope.Upload
	Body   []byte   // canonical body bytes
	Hash   [32]byte // SHA-256 of Body
	Sig    []byte   // the device's Ed25519 signature over Body (stored with the upload)
	Device uuid.UUID
	// Resent is set by Verify when the bytes are the exact re-send of an upload accepted
	// before (Accept answers it with the original receipt).
	Resent bool

	state *deviceState
}

// Accept verifies a signed upload (the envelope's wire bytes, as received over HTTP or
// MQTT), has core validate its samples (core.Prepare) and, if everything passes, stores it in
// one transaction shared with other concurrent uploads (group commit): the samples with
// their audit event (core.Store), the device's new sequence number and the receipt. It
// returns the signed receipt once that transaction committed; the committed observations
// reach the rules afterwards (core.Publish), so a receipt never waits for an alarm.
//
// An exact re-send of an upload accepted before (same canonical bytes) returns the receipt
// stored then, with Receipt.Replayed set, and stores nothing. Every refusal is a
// *RejectError wrapping one of the sentinels of this package (ErrMalformed, ErrTooLarge,
// ErrUnknownDevice, ErrUnknownKey, ErrBadSignature, ErrDeviceSuspended,
// ErrDeviceDecommissioned, ErrReplay, ErrNotAssigned, ErrClockSkew, ErrRateLimited,
// ErrQuotaExceeded, ErrBackpressure) or carrying core's refusal of the samples (its
// ErrorCode, e.g. unknown_code), is recorded here — the one place — as an `upload.rejected`
// audit event with its reason code, and stores nothing else. Other errors are internal
// failures.
//
// Accept is safe for concurrent use and is the one entry point of every transport.
func (s *Service) Accept(ctx context.Context, raw []byte, meta Meta) (*Receipt, error) {
	if s.cfg.Ingester == nil || s.cfg.ReceiptSigner == nil {
		return nil, errors.New("devices: Accept needs Config.Ingester and Config.ReceiptSigner")
	}
	v, rc, err := s.verify(ctx, raw)
	if err != nil {
		return nil, s.rejected(ctx, raw, v, meta, err)
	}
	if rc != nil {
		s.stats.replayed.Add(1)
		return rc, nil // exact re-send
	}
	p, err := s.admitUpload(ctx, v, meta)
	if errors.Is(err, ErrReplay) {
		// An exact re-send that raced its original past verification gets the original's
		// receipt (storedReceipt waits for a pending one); anything else stays a replay.
		if rc, serr := s.storedReceipt(ctx, v); serr == nil {
			s.stats.replayed.Add(1)
			return rc, nil
		}
	}
	if err != nil {
		return nil, s.rejected(ctx, raw, v, meta, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		// The commit goes on without us; its outcome is in the database either way.
		return nil, fmt.Errorf("accept upload: %w", ctx.Err())
	}
	if errors.Is(p.err, ErrReplay) {
		// The commit found the sequence already taken: by this upload's original, committed
		// meanwhile by another replica (a device re-sends through the load balancer when the
		// replica that held its first attempt died), the re-send gets the original's receipt.
		if rc, serr := s.storedReceipt(ctx, v); serr == nil {
			s.stats.replayed.Add(1)
			return rc, nil
		}
	}
	if p.err != nil {
		var re *RejectError
		if errors.As(p.err, &re) {
			return nil, s.rejected(ctx, raw, v, meta, p.err)
		}
		return nil, fmt.Errorf("accept upload %x: %w", v.Hash[:8], p.err)
	}
	if p.receiptSig != nil {
		return s.receiptWith(p.receiptBody, &p.receipt, p.receiptSig, v.Hash, false)
	}
	return s.signReceipt(ctx, p.receiptBody, &p.receipt, v.Hash, false)
}

// Verify runs every check of Accept that needs no commit and stores nothing (not even a
// rejection): decode, device status and key, signature, skew, sequence. An exact re-send of
// an accepted upload verifies (it is genuine), with Verified.Resent set. It is exported for
// tools and the server's throttle (which never refuses a genuine upload); transports call
// Accept.
func (s *Service) Verify(ctx context.Context, raw []byte) (*Verified, error) {
	v, rc, err := s.verify(ctx, raw)
	if err != nil {
		return v, err
	}
	if rc != nil {
		v.Resent = true
	}
	return v, nil
}

// verify returns the verified upload, or the stored receipt of an exact re-send, or a
// rejection. v is returned (partly filled) even on error, for the audit of the rejection.
func (s *Service) verify(ctx context.Context, raw []byte) (*Verified, *Receipt, error) {
	lim := s.cfg.Limits
	if lim.MaxEnvelopeBytes <= 0 {
		lim.MaxEnvelopeBytes = envelope.DefaultLimits.MaxEnvelopeBytes
	}
	env, err := envelope.ParseEnvelope(raw, lim)
	if err != nil {
		return nil, nil, envErr(err)
	}
	v := &Verified{Body: env.Body, Hash: envelope.Hash(env.Body), Sig: env.Sig}
	u, err := envelope.ParseUpload(env.Body, lim)
	if err != nil {
		return v, nil, envErr(err)
	}
	v.Upload = u
	if u.Seq > math.MaxInt64 || u.KeyVersion > math.MaxInt32 {
		return v, nil, reject(ErrMalformed, "sequence number or key version out of range")
	}
	id, err := uuid.Parse(u.Device)
	if err != nil {
		return v, nil, reject(ErrMalformed, "device id is not a UUID")
	}
	v.Device = id
	d, err := s.device(ctx, id)
	if err != nil {
		return v, nil, err
	}
	v.state = d
	var refusal *RejectError
	switch d.status {
	case StatusActive:
		if d.verifier == nil || u.KeyVersion != d.keyVersion {
			refusal = reject(ErrUnknownKey, "key version %d is not the device's current key", u.KeyVersion)
		}
	case StatusSuspended:
		refusal = reject(ErrDeviceSuspended, "device %s is suspended", id)
	case StatusDecommissioned:
		refusal = reject(ErrDeviceDecommissioned, "device %s is decommissioned", id)
	default:
		refusal = reject(ErrDeviceSuspended, "device %s is %s", id, d.status)
	}
	if refusal != nil {
		// Re-send first: the exact re-send of an upload accepted before (its answer lost) gets
		// its original receipt even after a key rotation or while the device is suspended or
		// decommissioned — the upload was stored then, nothing is stored now.
		rc, err := s.resentReceipt(ctx, v, env.Sig)
		if err != nil {
			return v, nil, err
		}
		if rc != nil {
			return v, rc, nil
		}
		return v, nil, refusal
	}
	if d.verifier.Verify(env.Body, env.Sig) != nil {
		return v, nil, &RejectError{Err: ErrBadSignature, Code: CodeBadSignature, Detail: fmt.Sprintf("signature does not verify under key %s/v%d", id, d.keyVersion)}
	}
	// Sequence: at or below the last admitted one is a replay, unless it is the exact
	// re-send of an accepted upload (idempotent retry), checked before the skew so that a
	// late retry still gets its receipt.
	d.mu.Lock()
	reserved := d.reserved
	d.mu.Unlock()
	if u.Seq <= reserved {
		rc, err := s.storedReceipt(ctx, v)
		if err != nil {
			return v, nil, err
		}
		return v, rc, nil
	}
	now := s.cfg.Now()
	if skew := now.Sub(u.SentTime()); skew > s.cfg.MaxSkew || skew < -s.cfg.MaxSkew {
		return v, nil, reject(ErrClockSkew, "sent_at is %s from server time, allowed ±%s", skew.Round(time.Millisecond), s.cfg.MaxSkew)
	}
	if d.patient == uuid.Nil {
		return v, nil, reject(ErrNotAssigned, "device %s is not assigned to a patient", id)
	}
	return v, nil, nil
}

// resentReceipt returns the stored receipt of an accepted upload with v's exact body, signed
// by the device key version that body names (now perhaps retired), or nil when there is none.
// It is the re-send check for devices whose current key or status would refuse the upload.
func (s *Service) resentReceipt(ctx context.Context, v *Verified, sig []byte) (*Receipt, error) {
	var pub []byte
	err := s.cfg.Pool.QueryRow(ctx, `SELECT k.public_key FROM devices_uploads u
		JOIN devices_keys k ON k.device_id = u.device_id AND k.version = u.key_version
		WHERE u.hash = $1 AND u.device_id = $2 AND u.key_version = $3`,
		v.Hash[:], v.Device, int64(v.Upload.KeyVersion)).Scan(&pub)
	if isNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up re-sent upload %x: %w", v.Hash[:8], err)
	}
	if envelope.VerifySignature(pub, v.Body, sig) != nil {
		return nil, nil // not signed by the key that signed the original: not a re-send
	}
	rc, err := s.storedReceipt(ctx, v)
	if errors.Is(err, ErrReplay) {
		return nil, nil
	}
	return rc, err
}

// envErr turns an envelope decoding error into a RejectError.
func envErr(err error) error {
	switch {
	case errors.Is(err, envelope.ErrTooLarge):
		return &RejectError{Err: ErrTooLarge, Code: CodeTooLarge, Detail: err.Error()}
	case errors.Is(err, envelope.ErrBadSignature):
		return &RejectError{Err: ErrBadSignature, Code: CodeBadSignature, Detail: err.Error()}
	default:
		return &RejectError{Err: ErrMalformed, Code: CodeMalformed, Detail: err.Error()}
	}
}

// storedReceipt returns the receipt of an accepted upload with v's exact bytes, or ErrReplay.
func (s *Service) storedReceipt(ctx context.Context, v *Verified) (*Receipt, error) {
	var body []byte
	err := s.cfg.Pool.QueryRow(ctx, `SELECT receipt FROM devices_uploads WHERE hash = $1 AND device_id = $2`,
		v.Hash[:], v.Device).Scan(&body)
	if err != nil {
		if isNoRows(err) {
			if p := s.bat.pendingFor(v.Hash); p != nil {
				// The same bytes are being committed right now: wait for that outcome.
				select {
				case <-p.done:
				case <-ctx.Done():
					return nil, fmt.Errorf("wait for pending upload: %w", ctx.Err())
				}
				if p.err == nil {
					return s.signReceipt(ctx, p.receiptBody, &p.receipt, v.Hash, true)
				}
			}
			return nil, reject(ErrReplay, "sequence number %d is not above the last accepted", v.Upload.Seq)
		}
		return nil, fmt.Errorf("look up upload %x: %w", v.Hash[:8], err)
	}
	return s.signReceipt(ctx, s.withLeafIndex(ctx, body), nil, v.Hash, true)
}

// withLeafIndex adds the audit log leaf index to a stored receipt body once the upload's
// audit event is integrated (the rest of the body is unchanged).
func (s *Service) withLeafIndex(ctx context.Context, body []byte) []byte {
	li, ok := s.cfg.Proofs.(LeafIndexer)
	if !ok {
		return body
	}
	var r envelope.Receipt
	if err := decodeReceiptBody(body, &r); err != nil || r.LeafIndex != nil {
		return body
	}
	id, err := uuid.Parse(r.AuditEvent)
	if err != nil {
		return body
	}
	idx, ok, err := li.EventLeafIndex(ctx, id)
	if err != nil || !ok {
		return body
	}
	r.LeafIndex = &idx
	nb, err := envelope.Canonical(&r)
	if err != nil {
		return body
	}
	return nb
}

// UploadReceipt returns a freshly signed receipt of an accepted upload, with its audit log
// leaf index once the upload's audit event is in the log; ErrNotFound when no upload with
// this hash was accepted.
func (s *Service) UploadReceipt(ctx context.Context, hash [32]byte) (*Receipt, error) {
	if s.cfg.ReceiptSigner == nil {
		return nil, errors.New("devices: no receipt signer configured")
	}
	var body, sig []byte
	var signedAt *time.Time
	err := s.cfg.Pool.QueryRow(ctx, `SELECT receipt, signature, signed_at FROM devices_uploads WHERE hash = $1`, hash[:]).Scan(&body, &sig, &signedAt)
	if isNoRows(err) {
		return nil, reject(ErrNotFound, "no accepted upload %x", hash[:8])
	}
	if err != nil {
		return nil, fmt.Errorf("look up upload: %w", err)
	}
	rc, err := s.signReceipt(ctx, s.withLeafIndex(ctx, body), nil, hash, true)
	if err != nil {
		return nil, err
	}
	rc.DeviceSignature = sig
	if signedAt != nil {
		rc.DeviceSignedAt = signedAt.UTC()
	}
	return rc, nil
}

// admitUpload checks the global back-pressure, takes rate-limit tokens, has core prepare the
// samples, then reserves the sequence number and queues the upload for group commit (the
// reservation and the queueing stay one short step, with no I/O between them).
func (s *Service) admitUpload(ctx context.Context, v *Verified, meta Meta) (*pending, error) {
	if s.cfg.Pushback != nil {
		if err := s.cfg.Pushback.Admit(); err != nil {
			e := reject(ErrBackpressure, "the audit log is behind; retry later")
			e.RetryAfter = time.Second
			var pe *audit.PushbackError
			if errors.As(err, &pe) {
				e.RetryAfter = max(pe.RetryAfter, time.Second)
			}
			return nil, e
		}
	}
	u, d := v.Upload, v.state
	points := len(u.Samples)
	for _, w := range u.Waveforms {
		points += (len(w.Data) + 99) / 100
	}
	now := s.cfg.Now()
	d.mu.Lock()
	if u.Seq <= d.reserved {
		d.mu.Unlock()
		return nil, reject(ErrReplay, "sequence number %d is not above the last accepted", u.Seq)
	}
	if err := s.admit(d.lim, points, now); err != nil {
		d.mu.Unlock()
		return nil, err
	}
	d.mu.Unlock()

	samples := make([]core.Sample, len(u.Samples))
	for i, smp := range u.Samples {
		samples[i] = core.Sample{Code: smp.Code, Value: smp.Value, Unit: smp.Unit, Time: smp.Time()}
	}
	// Admitted: from here on the upload goes through whatever its client does (a device that
	// gives up still finds its receipt when it retries).
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	prep, err := s.cfg.Ingester.Prepare(pctx, core.Batch{
		PatientID:     d.patient,
		AssignedSince: d.assignedAt, // readings go to the patient of the time they were taken
		PreviousUntil: d.prevUntil,
		Provenance: core.Provenance{
			DeviceID: v.Device.String(), KeyID: keyID(v.Device, u.KeyVersion), UploadHash: v.Hash,
			Sequence: u.Seq, ReceivedAt: now, Transport: meta.Transport,
			RequestID: meta.RequestID, SourceAddr: meta.SourceAddr,
		},
		Samples: samples,
	})
	if err != nil {
		var ce interface{ ErrorCode() string }
		if errors.As(err, &ce) { // core refused the samples: a rejection with core's code
			return nil, &RejectError{Err: err, Code: ce.ErrorCode()}
		}
		return nil, fmt.Errorf("prepare upload %x: %w", v.Hash[:8], err)
	}
	d.mu.Lock()
	if u.Seq <= d.reserved { // another upload of the device got in meanwhile
		d.mu.Unlock()
		return nil, reject(ErrReplay, "sequence number %d is not above the last accepted", u.Seq)
	}
	prev := d.reserved
	d.reserved = u.Seq
	d.mu.Unlock()
	p := &pending{v: v, meta: meta, receivedAt: now, prevReserved: prev, prepared: prep, done: make(chan struct{})}
	if err := s.bat.enqueue(p); err != nil {
		d.mu.Lock()
		if d.reserved == u.Seq {
			d.reserved = prev
		}
		d.mu.Unlock()
		return nil, err
	}
	return p, nil
}

// keyID names a device key version in provenance and audit events.
func keyID(device uuid.UUID, version uint64) string {
	return fmt.Sprintf("device/%s/v%d", device, version)
}

// signReceipt signs a receipt body; rec is the body decoded, or nil to decode it here.
func (s *Service) signReceipt(ctx context.Context, body []byte, rec *envelope.Receipt, hash [32]byte, replayed bool) (*Receipt, error) {
	sig, err := s.cfg.ReceiptSigner.Sign(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("sign receipt: %w", err)
	}
	return s.receiptWith(body, rec, sig, hash, replayed)
}

// receiptWith assembles a signed receipt from its body and signature.
func (s *Service) receiptWith(body []byte, rec *envelope.Receipt, sig []byte, hash [32]byte, replayed bool) (*Receipt, error) {
	sr := envelope.SignedReceipt{Body: body, Sig: sig, KeyID: s.cfg.ReceiptSigner.KeyID()}
	wire, err := sr.Marshal()
	if err != nil {
		return nil, err
	}
	r := &Receipt{Wire: wire, Signed: sr, UploadHash: hash, Replayed: replayed}
	if rec != nil {
		r.Body = *rec
	} else if err := decodeReceiptBody(body, &r.Body); err != nil {
		return nil, err
	}
	return r, nil
}

// rejected records the audit event of a refused upload (group-committed: nothing else is
// written) and returns err. A failure to audit is returned as an internal error: a
// rejection that cannot be audited is not answered as a clean 4xx.
func (s *Service) rejected(ctx context.Context, raw []byte, v *Verified, meta Meta, err error) error {
	var re *RejectError
	if !errors.As(err, &re) {
		return err
	}
	s.stats.rejected.Add(1)
	ev := audit.Event{
		Actor:      audit.Actor{Kind: audit.ActorDevice, ID: "unknown", AuthMethod: "none"},
		Action:     "upload.rejected",
		Object:     audit.Object{Type: "upload"},
		Outcome:    audit.OutcomeRejected,
		Reason:     re.Code,
		RequestID:  meta.RequestID,
		SourceAddr: meta.SourceAddr,
		Time:       s.cfg.Now(),
	}
	payload := map[string]any{"transport": meta.Transport, "bytes": len(raw), "detail": re.Detail}
	if meta.CorrelationID != "" {
		payload["correlation_id"] = meta.CorrelationID
	}
	if v != nil {
		ev.Object.ID = hex.EncodeToString(v.Hash[:])
		if v.Upload != nil {
			ev.Actor.ID = v.Upload.Device // as claimed; AuthMethod says whether it was proven
			payload["seq"] = v.Upload.Seq
			payload["key_version"] = v.Upload.KeyVersion
			payload["sent_at"] = v.Upload.SentAt
			payload["samples"] = len(v.Upload.Samples)
		}
		if v.state != nil && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUnknownKey) &&
			!errors.Is(err, ErrDeviceSuspended) && !errors.Is(err, ErrDeviceDecommissioned) {
			ev.Actor.AuthMethod = "device-signature"
		}
	}
	var be *core.BatchError
	if errors.As(err, &be) { // core's verdict on each bad sample
		payload["errors"] = be.Samples
	}
	if _, own := codeOf[re.Err]; !own && v != nil && v.state != nil { // refused by core: for whom
		payload["patient_id"] = v.state.patient
	}
	ev.Payload = payload
	// The rejection is recorded even when the client has gone away meanwhile.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, aerr := s.cfg.Recorder.RecordNow(actx, ev); aerr != nil {
		return fmt.Errorf("audit rejected upload (%s): %w", re.Code, aerr)
	}
	return err
}
