package devices

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/devices/envelope"
)

// Origin is who asks for a registry change and from where, for its audit event.
type Origin struct {
	Actor      audit.Actor
	RequestID  string
	SourceAddr string
}

// Device is one registered device.
type Device struct {
	ID         uuid.UUID  `json:"id"`
	Serial     string     `json:"serial"`
	Model      string     `json:"model"`
	Firmware   string     `json:"firmware"`
	Status     string     `json:"status"`
	KeyVersion int64      `json:"key_version"` // 0 until enrolled
	LastSeq    int64      `json:"last_seq"`
	PatientID  *uuid.UUID `json:"patient_id,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
}

// NewDevice is what an administrator registers.
type NewDevice struct {
	Serial   string `json:"serial"`
	Model    string `json:"model"`
	Firmware string `json:"firmware"`
}

// Key is one version of a device's public key.
type Key struct {
	Version   int64      `json:"version"`
	PublicKey []byte     `json:"public_key"`
	CreatedAt time.Time  `json:"created_at"`
	RetiredAt *time.Time `json:"retired_at,omitempty"`
}

// Assignment is one period of a device's patient assignment (PatientID nil: unassigned).
type Assignment struct {
	PatientID *uuid.UUID `json:"patient_id"`
	StartedAt time.Time  `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	ActorID   string     `json:"actor_id"`
}

const deviceCols = `id, serial, model, firmware, status, key_version, last_seq, patient_id, created_at, updated_at`

func scanDevice(row pgx.Row) (*Device, error) {
	var d Device
	err := row.Scan(&d.ID, &d.Serial, &d.Model, &d.Firmware, &d.Status, &d.KeyVersion, &d.LastSeq, &d.PatientID, &d.CreatedAt, &d.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return &d, nil
}

func validText(field, v string, maxLen int) error {
	if strings.TrimSpace(v) == "" || len(v) > maxLen {
		return reject(ErrInvalidInput, "%s must be 1..%d bytes", field, maxLen)
	}
	for _, r := range v {
		if r < ' ' || r == 0x7f {
			return reject(ErrInvalidInput, "%s contains control characters", field)
		}
	}
	return nil
}

// inTx runs f in a transaction and records ev (completed by f) in it.
func (s *Service) inTx(ctx context.Context, f func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.cfg.Pool, f)
}

func (s *Service) event(o Origin, action, objID string) audit.Event {
	return audit.Event{Actor: o.Actor, Action: action, Object: audit.Object{Type: "device", ID: objID},
		Outcome: audit.OutcomeSuccess, RequestID: o.RequestID, SourceAddr: o.SourceAddr, Time: s.cfg.Now()}
}

// auditRejected records a refused registry request (group-committed: nothing else is
// written) and returns err.
// Only refusals (a *RejectError) are recorded: any other error (the database failing, say)
// is returned as it is, since no decision about the request was made.
func (s *Service) auditRejected(ctx context.Context, ev audit.Event, err error) error {
	var re *RejectError
	if !errors.As(err, &re) {
		return err
	}
	ev.Outcome = audit.OutcomeRejected
	ev.Reason = ReasonOf(err)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, aerr := s.cfg.Recorder.RecordNow(ctx, ev); aerr != nil {
		return fmt.Errorf("audit rejected %s: %w", ev.Action, aerr)
	}
	return err
}

// Register adds a device (status active, no key until it enrolls).
func (s *Service) Register(ctx context.Context, o Origin, nd NewDevice) (*Device, error) {
	ev := s.event(o, "device.registered", "")
	for _, c := range []struct{ f, v string }{{"serial", nd.Serial}, {"model", nd.Model}, {"firmware", nd.Firmware}} {
		if err := validText(c.f, c.v, 128); err != nil {
			return nil, s.auditRejected(ctx, ev, err)
		}
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("register device: %w", err)
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	ev.Object.ID = id.String()
	ev.Payload = nd
	var d *Device
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		d, err = scanDevice(tx.QueryRow(ctx, `INSERT INTO devices_devices (id, serial, model, firmware, status, created_at, updated_at)
			VALUES ($1,$2,$3,$4,'active',$5,$5) RETURNING `+deviceCols, id, nd.Serial, nd.Model, nd.Firmware, now))
		if err != nil {
			if isUniqueViolation(err) {
				return reject(ErrConflict, "a device with serial %q exists", nd.Serial)
			}
			return fmt.Errorf("register device: %w", err)
		}
		if err := stampRows(ctx, tx, &ev, map[string]any{"serial": nd.Serial, "model": nd.Model, "firmware": nd.Firmware}, id); err != nil {
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return nil, s.auditRejected(ctx, ev, err)
	}
	return d, nil
}

// Get returns one device, or ErrNotFound.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (*Device, error) {
	d, err := scanDevice(s.cfg.Pool.QueryRow(ctx, `SELECT `+deviceCols+` FROM devices_devices WHERE id = $1`, id))
	if isNoRows(err) {
		return nil, reject(ErrNotFound, "device %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get device %s: %w", id, err)
	}
	return d, nil
}

// List returns devices ordered by id, after the given id (uuid.Nil: from the start), at most
// limit (default 100, at most 1000), optionally only those with a status.
func (s *Service) List(ctx context.Context, status string, after uuid.UUID, limit int) ([]Device, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT `+deviceCols+` FROM devices_devices
		WHERE id > $1 AND ($2 = '' OR status = $2) ORDER BY id LIMIT $3`, after, status, limit)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	out := []Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, *d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// Keys returns the device's key versions, oldest first.
func (s *Service) Keys(ctx context.Context, id uuid.UUID) ([]Key, error) {
	if _, err := s.Get(ctx, id); err != nil {
		return nil, err
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT version, public_key, created_at, retired_at FROM devices_keys WHERE device_id = $1 ORDER BY version`, id)
	if err != nil {
		return nil, fmt.Errorf("device keys: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var k Key
		err := r.Scan(&k.Version, &k.PublicKey, &k.CreatedAt, &k.RetiredAt)
		return k, err
	})
}

// Assignments returns the device's patient assignment history, oldest first.
func (s *Service) Assignments(ctx context.Context, id uuid.UUID) ([]Assignment, error) {
	if _, err := s.Get(ctx, id); err != nil {
		return nil, err
	}
	rows, err := s.cfg.Pool.Query(ctx, `SELECT patient_id, started_at, ended_at, actor_id FROM devices_assignments WHERE device_id = $1 ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("device assignments: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Assignment, error) {
		var a Assignment
		err := r.Scan(&a.PatientID, &a.StartedAt, &a.EndedAt, &a.ActorID)
		return a, err
	})
}

// lockDevice reads and locks a device row in tx.
func lockDevice(ctx context.Context, tx pgx.Tx, id uuid.UUID) (*Device, error) {
	d, err := scanDevice(tx.QueryRow(ctx, `SELECT `+deviceCols+` FROM devices_devices WHERE id = $1 FOR UPDATE`, id))
	if isNoRows(err) {
		return nil, reject(ErrNotFound, "device %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("lock device %s: %w", id, err)
	}
	return d, nil
}

// SetStatus moves a device to status ("active", "suspended" or "decommissioned"). Allowed:
// active ⇄ suspended, and either to decommissioned (final: its key is retired and its patient
// assignment ended). It takes effect at once: the next upload of the device is refused, and
// uploads already verified but not committed are refused at commit.
func (s *Service) SetStatus(ctx context.Context, o Origin, id uuid.UUID, status, reason string) (*Device, error) {
	action := map[string]string{StatusActive: "device.reactivated", StatusSuspended: "device.suspended", StatusDecommissioned: "device.decommissioned"}[status]
	ev := s.event(o, "device.status.changed", id.String())
	if action == "" {
		return nil, s.auditRejected(ctx, ev, reject(ErrInvalidInput, "status %q: want active, suspended or decommissioned", status))
	}
	ev.Action = action
	if len(reason) > 500 {
		return nil, s.auditRejected(ctx, ev, reject(ErrInvalidInput, "reason longer than 500 bytes"))
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	var out *Device
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		d, err := lockDevice(ctx, tx, id)
		if err != nil {
			return err
		}
		if d.Status == StatusDecommissioned || d.Status == status {
			return reject(ErrConflict, "device is %s, cannot become %s", d.Status, status)
		}
		payload := map[string]any{"from": d.Status, "to": status, "reason": reason}
		ev.Payload = payload
		var ended []int64
		if status == StatusDecommissioned {
			if _, err := tx.Exec(ctx, `UPDATE devices_keys SET retired_at = $2 WHERE device_id = $1 AND retired_at IS NULL`, id, now); err != nil {
				return fmt.Errorf("retire keys: %w", err)
			}
			if d.PatientID != nil {
				if ended, err = endAssignment(ctx, tx, id, now); err != nil {
					return err
				}
			}
			out, err = scanDevice(tx.QueryRow(ctx, `UPDATE devices_devices SET status = $2, patient_id = NULL, updated_at = $3 WHERE id = $1 RETURNING `+deviceCols, id, status, now))
		} else {
			out, err = scanDevice(tx.QueryRow(ctx, `UPDATE devices_devices SET status = $2, updated_at = $3 WHERE id = $1 RETURNING `+deviceCols, id, status, now))
		}
		if err != nil {
			return fmt.Errorf("set device status: %w", err)
		}
		if err := notifyChanged(ctx, tx, id); err != nil {
			return err
		}
		if err := stampRows(ctx, tx, &ev, payload, id, ended...); err != nil {
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	s.cache.invalidate(id)
	if err != nil {
		return nil, s.auditRejected(ctx, ev, err)
	}
	return out, nil
}

// endAssignment ends the device's open assignment and returns the ids of the rows it ended.
func endAssignment(ctx context.Context, tx pgx.Tx, id uuid.UUID, now time.Time) ([]int64, error) {
	rows, err := tx.Query(ctx, `UPDATE devices_assignments SET ended_at = $2 WHERE device_id = $1 AND ended_at IS NULL RETURNING id`, id, now)
	if err != nil {
		return nil, fmt.Errorf("end assignment: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("end assignment: %w", err)
	}
	return ids, nil
}

// AssignPatient assigns the device to a patient (nil: unassigns it), ending the previous
// assignment; uploads from then on are stored for that patient. The patient must exist in
// core's registry.
func (s *Service) AssignPatient(ctx context.Context, o Origin, id uuid.UUID, patient *uuid.UUID) (*Device, error) {
	ev := s.event(o, "device.patient.assigned", id.String())
	if patient == nil {
		ev.Action = "device.patient.unassigned"
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	var out *Device
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		d, err := lockDevice(ctx, tx, id)
		if err != nil {
			return err
		}
		if d.Status == StatusDecommissioned {
			return reject(ErrConflict, "device is decommissioned")
		}
		if patient != nil {
			var ok bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM core_patients WHERE id = $1)`, *patient).Scan(&ok); err != nil {
				return fmt.Errorf("look up patient: %w", err)
			}
			if !ok {
				return reject(ErrInvalidInput, "no patient %s", *patient)
			}
		}
		payload := map[string]any{"from": d.PatientID, "to": patient}
		ev.Payload = payload
		ended, err := endAssignment(ctx, tx, id, now)
		if err != nil {
			return err
		}
		var started int64
		if err := tx.QueryRow(ctx, `INSERT INTO devices_assignments (device_id, patient_id, started_at, actor_id) VALUES ($1,$2,$3,$4) RETURNING id`,
			id, patient, now, o.Actor.ID).Scan(&started); err != nil {
			return fmt.Errorf("record assignment: %w", err)
		}
		out, err = scanDevice(tx.QueryRow(ctx, `UPDATE devices_devices SET patient_id = $2, updated_at = $3 WHERE id = $1 RETURNING `+deviceCols, id, patient, now))
		if err != nil {
			return fmt.Errorf("assign patient: %w", err)
		}
		if err := notifyChanged(ctx, tx, id); err != nil {
			return err
		}
		if err := stampRows(ctx, tx, &ev, payload, id, append(ended, started)...); err != nil {
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	s.cache.invalidate(id)
	if err != nil {
		return nil, s.auditRejected(ctx, ev, err)
	}
	return out, nil
}

// IssueEnrollmentToken makes a one-time token with which the device registers its key,
// valid for Config.EnrollmentTokenTTL. The token is returned once and only its hash stored.
func (s *Service) IssueEnrollmentToken(ctx context.Context, o Origin, id uuid.UUID) (token string, expires time.Time, err error) {
	ev := s.event(o, "device.enrollment_token.issued", id.String())
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", time.Time{}, fmt.Errorf("enrollment token: %w", err)
	}
	token = "vet_" + base64.RawURLEncoding.EncodeToString(raw)
	h := sha256.Sum256([]byte(token))
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	expires = now.Add(s.cfg.EnrollmentTokenTTL)
	ev.Payload = map[string]any{"expires_at": expires, "token_hash": hex.EncodeToString(h[:8])}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		d, err := lockDevice(ctx, tx, id)
		if err != nil {
			return err
		}
		if d.Status == StatusDecommissioned {
			return reject(ErrConflict, "device is decommissioned")
		}
		if _, err := tx.Exec(ctx, `INSERT INTO devices_enrollment_tokens (token_hash, device_id, created_at, expires_at) VALUES ($1,$2,$3,$4)`,
			h[:], id, now, expires); err != nil {
			return fmt.Errorf("store enrollment token: %w", err)
		}
		if err := stampToken(ctx, tx, &ev, h[:]); err != nil {
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return "", time.Time{}, s.auditRejected(ctx, ev, err)
	}
	return token, expires, nil
}

// Enrolled is the answer to a successful enrollment.
type Enrolled struct {
	DeviceID   uuid.UUID `json:"device_id"`
	KeyVersion int64     `json:"key_version"`
	// Replayed is set when the request is the re-send of an enrollment or a rotation already
	// applied (its answer lost): the answer is the original one and nothing changed.
	Replayed bool `json:"replayed,omitempty"`
}

// Enroll registers a device's public key from an enrollment request (envelope.SignEnroll):
// the token must be unused and unexpired, the body signed by the key it registers (proof of
// possession), and the key not registered to any device. The token is consumed; the key
// becomes the device's current key (version 1, or the next version when re-enrolling, the
// previous key retired at once). The request's time T must be within Config.MaxSkew of the
// server's clock (ErrClockSkew). The request is idempotent: its re-send after it was applied
// (the answer lost), while the key it registered is still the device's current key, gets the
// same answer with Replayed set and changes nothing; any other use of a used token is
// refused. Refusals are audited as `device.enroll.rejected`.
func (s *Service) Enroll(ctx context.Context, raw []byte, meta Meta) (*Enrolled, error) {
	ev := audit.Event{Actor: audit.Actor{Kind: audit.ActorDevice, ID: "unknown", AuthMethod: "enrollment-token"},
		Action: "device.enrolled", Object: audit.Object{Type: "device"}, Outcome: audit.OutcomeSuccess,
		RequestID: meta.RequestID, SourceAddr: meta.SourceAddr, Time: s.cfg.Now()}
	fail := func(err error) (*Enrolled, error) {
		ev.Action = "device.enroll.rejected"
		return nil, s.auditRejected(ctx, ev, err)
	}
	e, err := envelope.ParseEnroll(raw)
	if err != nil {
		return fail(envErr(err))
	}
	h := sha256.Sum256([]byte(e.Token))
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	// The request's time must be within the skew window, as an upload's: a captured
	// enrollment cannot be held back and played later (nothing is consumed by a refusal).
	if skew := now.Sub(time.UnixMilli(e.T)); skew > s.cfg.MaxSkew || skew < -s.cfg.MaxSkew {
		return fail(reject(ErrClockSkew, "enrollment signed %s from server time, allowed ±%s", skew.Round(time.Millisecond), s.cfg.MaxSkew))
	}
	var out Enrolled
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var (
			id      uuid.UUID
			expires time.Time
			used    *time.Time
		)
		err := tx.QueryRow(ctx, `SELECT device_id, expires_at, used_at FROM devices_enrollment_tokens WHERE token_hash = $1 FOR UPDATE`, h[:]).Scan(&id, &expires, &used)
		if isNoRows(err) {
			return reject(ErrInvalidToken, "unknown enrollment token")
		}
		if err != nil {
			return fmt.Errorf("look up enrollment token: %w", err)
		}
		ev.Actor.ID, ev.Object.ID = id.String(), id.String()
		if used != nil {
			// The re-send of the enrollment that consumed the token: the same public key,
			// registered at the moment the token was used, still current on an active device.
			var version int64
			err := tx.QueryRow(ctx, `SELECT k.version FROM devices_keys k JOIN devices_devices d ON d.id = k.device_id
				WHERE k.device_id = $1 AND k.public_key = $2 AND k.created_at = $3 AND k.retired_at IS NULL
				  AND d.key_version = k.version AND d.status = $4`, id, e.PublicKey, *used, StatusActive).Scan(&version)
			if err == nil {
				out = Enrolled{DeviceID: id, KeyVersion: version, Replayed: true}
				return nil
			}
			if !isNoRows(err) {
				return fmt.Errorf("look up enrollment: %w", err)
			}
			return reject(ErrInvalidToken, "enrollment token already used")
		}
		if !now.Before(expires) {
			return reject(ErrInvalidToken, "enrollment token expired")
		}
		d, err := lockDevice(ctx, tx, id)
		if err != nil {
			return err
		}
		if d.Status != StatusActive {
			return reject(ErrConflict, "device is %s", d.Status)
		}
		if err := addKey(ctx, tx, d, e.PublicKey, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE devices_enrollment_tokens SET used_at = $2 WHERE token_hash = $1`, h[:], now); err != nil {
			return fmt.Errorf("consume enrollment token: %w", err)
		}
		out = Enrolled{DeviceID: id, KeyVersion: d.KeyVersion + 1}
		if err := stampRows(ctx, tx, &ev, map[string]any{"key_version": out.KeyVersion, "public_key": hex.EncodeToString(e.PublicKey), "transport": meta.Transport}, id); err != nil {
			return err
		}
		if err := stampToken(ctx, tx, &ev, h[:]); err != nil { // the link it used up
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	s.cache.invalidate(out.DeviceID)
	if err != nil {
		return fail(err)
	}
	return &out, nil
}

// addKey makes pub the device's next key version and retires the current one.
func addKey(ctx context.Context, tx pgx.Tx, d *Device, pub []byte, now time.Time) error {
	next := d.KeyVersion + 1
	if _, err := tx.Exec(ctx, `UPDATE devices_keys SET retired_at = $2 WHERE device_id = $1 AND retired_at IS NULL`, d.ID, now); err != nil {
		return fmt.Errorf("retire key: %w", err)
	}
	// A savepoint keeps the transaction usable when the key is a duplicate.
	sp, err := tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("add key: %w", err)
	}
	if _, err := sp.Exec(ctx, `INSERT INTO devices_keys (device_id, version, public_key, created_at) VALUES ($1,$2,$3,$4)`, d.ID, next, pub, now); err != nil {
		_ = sp.Rollback(ctx)
		if isUniqueViolation(err) {
			return reject(ErrConflict, "this public key is already registered")
		}
		return fmt.Errorf("add key: %w", err)
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("add key: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE devices_devices SET key_version = $2, updated_at = $3 WHERE id = $1`, d.ID, next, now); err != nil {
		return fmt.Errorf("set key version: %w", err)
	}
	return notifyChanged(ctx, tx, d.ID)
}

// RotateKey replaces a device's key from a rotation request (envelope.SignRotate): signed by
// the current key and by the new key. From the commit on, only the new key is accepted.
// The request is idempotent: its re-send after it was applied (an answer lost) is answered
// with the same device and key version, Replayed set, and changes nothing (the skew window
// does not apply to it). Refusals are audited as `device.key.rotate.rejected`.
func (s *Service) RotateKey(ctx context.Context, raw []byte, meta Meta) (*Enrolled, error) {
	ev := audit.Event{Actor: audit.Actor{Kind: audit.ActorDevice, ID: "unknown", AuthMethod: "none"},
		Action: "device.key.rotated", Object: audit.Object{Type: "device"}, Outcome: audit.OutcomeSuccess,
		RequestID: meta.RequestID, SourceAddr: meta.SourceAddr, Time: s.cfg.Now()}
	fail := func(err error) (*Enrolled, error) {
		ev.Action = "device.key.rotate.rejected"
		return nil, s.auditRejected(ctx, ev, err)
	}
	r, env, err := envelope.ParseRotate(raw)
	if err != nil {
		return fail(envErr(err))
	}
	id, err := uuid.Parse(r.Device)
	if err != nil {
		return fail(reject(ErrMalformed, "device id"))
	}
	ev.Actor.ID, ev.Object.ID = id.String(), id.String()
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	var out Enrolled
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		d, err := lockDevice(ctx, tx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return reject(ErrUnknownDevice, "device %s is not registered", id)
			}
			return err
		}
		switch d.Status {
		case StatusSuspended:
			return reject(ErrDeviceSuspended, "device is suspended")
		case StatusDecommissioned:
			return reject(ErrDeviceDecommissioned, "device is decommissioned")
		}
		// Idempotent: the re-send of the rotation that made the current key (its answer
		// lost) gets the same answer and changes nothing, whenever it comes.
		if again, err := rotatedBefore(ctx, tx, d, r, env); err != nil || again {
			if again {
				out = Enrolled{DeviceID: id, KeyVersion: d.KeyVersion, Replayed: true}
			}
			return err
		}
		if d.KeyVersion == 0 || uint64(d.KeyVersion) != r.KeyVersion {
			return reject(ErrUnknownKey, "key version %d is not the device's current key", r.KeyVersion)
		}
		var pub []byte
		if err := tx.QueryRow(ctx, `SELECT public_key FROM devices_keys WHERE device_id = $1 AND version = $2`, id, d.KeyVersion).Scan(&pub); err != nil {
			return fmt.Errorf("current key: %w", err)
		}
		if err := envelope.VerifySignature(pub, env.Body, env.Sig); err != nil {
			return reject(ErrBadSignature, "rotation not signed by the current key")
		}
		if skew := now.Sub(time.UnixMilli(r.T)); skew > s.cfg.MaxSkew || skew < -s.cfg.MaxSkew {
			return reject(ErrClockSkew, "rotation signed %s from server time", skew.Round(time.Millisecond))
		}
		ev.Actor.AuthMethod = "device-signature"
		if err := addKey(ctx, tx, d, r.NewPublicKey, now); err != nil {
			return err
		}
		out = Enrolled{DeviceID: id, KeyVersion: d.KeyVersion + 1}
		if err := stampRows(ctx, tx, &ev, map[string]any{"from_version": d.KeyVersion, "key_version": out.KeyVersion,
			"public_key": hex.EncodeToString(r.NewPublicKey), "transport": meta.Transport}, id); err != nil {
			return err
		}
		_, err = s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	s.cache.invalidate(id)
	if err != nil {
		return fail(err)
	}
	return &out, nil
}

// rotatedBefore reports whether r is a rotation already applied to d: the device's current
// key is r's new key, registered as the version right after r's, and the body is signed by
// that previous version's key.
func rotatedBefore(ctx context.Context, tx pgx.Tx, d *Device, r *envelope.Rotate, env *envelope.RotateEnvelope) (bool, error) {
	if d.KeyVersion < 2 || uint64(d.KeyVersion) != r.KeyVersion+1 {
		return false, nil
	}
	var prev, cur []byte
	err := tx.QueryRow(ctx, `SELECT
		(SELECT public_key FROM devices_keys WHERE device_id = $1 AND version = $2),
		(SELECT public_key FROM devices_keys WHERE device_id = $1 AND version = $3)`,
		d.ID, d.KeyVersion-1, d.KeyVersion).Scan(&prev, &cur)
	if err != nil {
		return false, fmt.Errorf("keys of device %s: %w", d.ID, err)
	}
	if prev == nil || !bytes.Equal(cur, r.NewPublicKey) || envelope.VerifySignature(prev, env.Body, env.Sig) != nil {
		return false, nil
	}
	return true, nil
}

// UploadProof returns the audit log's proof for the upload with this hash: ErrNotFound when
// no such upload was accepted, ErrProofPending while its event waits for the log.
func (s *Service) UploadProof(ctx context.Context, hash [32]byte) (eventID uuid.UUID, proof any, err error) {
	err = s.cfg.Pool.QueryRow(ctx, `SELECT audit_event_id FROM devices_uploads WHERE hash = $1`, hash[:]).Scan(&eventID)
	if isNoRows(err) {
		return uuid.Nil, nil, reject(ErrNotFound, "no accepted upload %x", hash[:8])
	}
	if err != nil {
		return uuid.Nil, nil, fmt.Errorf("look up upload: %w", err)
	}
	if s.cfg.Proofs == nil {
		return eventID, nil, fmt.Errorf("upload %x: %w", hash[:8], ErrProofPending)
	}
	proof, err = s.cfg.Proofs.EventProof(ctx, eventID)
	if err != nil {
		return eventID, nil, fmt.Errorf("upload %x: %w", hash[:8], err)
	}
	return eventID, proof, nil
}
