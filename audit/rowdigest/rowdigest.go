// Package rowdigest ties an audited domain row to the event that last wrote it
// (docs/audit.md "Domain rows against the trail"). Each audited table listed here has two
// columns, audit_event_id (the id of the event whose action last created or changed the row)
// and audit_digest (SHA-256 of the row's audited content, defined below). The writer, in the
// transaction of the action, calls Stamp after changing the row and puts what it returns in
// its event's payload under PayloadKey:
//
//	"row_digests": {"<table>/<key>": "<hex digest>", …}   ("" for a row the action deleted)
//
// `vigil audit verify` recomputes each row's digest from the row and checks it, both ways,
// against the last authentic event that names the row: a row with no such event is an
// unaudited change, a row that differs (or names an older event, or was deleted by its event)
// is a domain mismatch, and a row an event wrote that is gone is a domain mismatch too. The
// digest holds no PHI in clear: sealed columns enter it as their ciphertext.
//
// Digest of one row (all integers big-endian):
//
//	SHA-256("vigil-row-v1" || 0x00 || table || 0x00 || for each column: name || 0x00 || value)
//
// value: 0x00 for NULL; 's' uint32 length || UTF-8 for text; 'b' uint32 length || bytes for
// bytea; 'u' 16 bytes for uuid; 't' int64 Unix microseconds for timestamptz; 'o' 0x00/0x01 for
// boolean; 'i' int64 for integers; 'a' uint32 count || each element's value for an array.
package rowdigest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PayloadKey is the event payload field that carries the digests of the rows the event wrote.
const PayloadKey = "row_digests"

// Deleted is the digest an event gives a row its action deleted.
const Deleted = ""

// Spec is one audited table: how its rows are keyed and which columns are audited.
type Spec struct {
	Table string   // the table (alias t in Key and Cols)
	Key   string   // SQL expression of the row's key, as text
	Names []string // the audited columns' names (in the digest)
	Cols  []string // SQL expression of each audited column (same order as Names)
}

// The audited tables (each with audit_event_id and audit_digest, migration 00610).
var (
	// Devices: a device's identity, status, current patient and current key version. (Its
	// upload sequence number is not audited content: every upload moves it.)
	Devices = Spec{Table: "devices_devices", Key: "t.id::text",
		Names: []string{"serial", "model", "status", "patient_id", "key_version"},
		Cols:  []string{"t.serial", "t.model", "t.status", "t.patient_id", "t.key_version"}}
	// DeviceAssignments: each assignment of a device to a patient (or unassignment) and its end.
	DeviceAssignments = Spec{Table: "devices_assignments", Key: "t.id::text",
		Names: []string{"device_id", "patient_id", "started_at", "ended_at", "actor_id"},
		Cols:  []string{"t.device_id", "t.patient_id", "t.started_at", "t.ended_at", "t.actor_id"}}
	// Patients: the sealed PHI (its ciphertext), the MRN blind index, ward, admission,
	// discharge, whether the admission was cancelled.
	Patients = Spec{Table: "core_patients", Key: "t.id::text",
		Names: []string{"mrn_index", "phi_sealed", "ward_id", "admitted_at", "discharged_at", "admission_cancelled"},
		Cols:  []string{"t.mrn_index", "t.phi_sealed", "t.ward_id", "t.admitted_at", "t.discharged_at", "t.admission_cancelled"}}
	// Users: the login (e-mail and OIDC blind indexes), sealed profile, password hash, status,
	// and the second factors: sealed TOTP secret, recovery codes (their hashes) and passkeys
	// (credential id and public key). A passkey's signature counter and a recovery code's use
	// are not audited content (sign-in moves them).
	Users = Spec{Table: "auth_users", Key: "t.id::text",
		Names: []string{"email_index", "oidc_index", "profile_sealed", "password_hash", "totp_sealed", "status", "disabled_at",
			"recovery_codes", "passkeys"},
		Cols: []string{"t.email_index", "t.oidc_index", "t.profile_sealed", "t.password_hash", "t.totp_sealed", "t.status", "t.disabled_at",
			"(SELECT array_agg(c.code_hash ORDER BY c.code_hash) FROM auth_recovery_codes c WHERE c.user_id = t.id)",
			"(SELECT array_agg(w.id || convert_to(coalesce(w.credential->>'publicKey', ''), 'UTF8') ORDER BY w.id) FROM auth_webauthn_credentials w WHERE w.user_id = t.id)"}}
	// PolicyRules: each Casbin line (what a role may do; who holds a role where).
	PolicyRules = Spec{Table: "auth_policy_rules", Key: "t.ptype || '|' || t.v0 || '|' || t.v1 || '|' || t.v2 || '|' || t.v3",
		Names: []string{"ptype", "v0", "v1", "v2", "v3", "source"},
		Cols:  []string{"t.ptype", "t.v0", "t.v1", "t.v2", "t.v3", "t.source"}}

	// ServiceAccounts: a machine principal's name and status.
	ServiceAccounts = Spec{Table: "auth_service_accounts", Key: "t.id::text",
		Names: []string{"name", "status", "disabled_at"},
		Cols:  []string{"t.name", "t.status", "t.disabled_at"}}
	// APITokens: a token's account, the hash it is found by, its roles, expiry and revocation
	// (not its last use).
	APITokens = Spec{Table: "auth_api_tokens", Key: "t.id::text",
		Names: []string{"service_account_id", "token_hash", "name", "roles", "expires_at", "revoked_at"},
		Cols:  []string{"t.service_account_id", "t.token_hash", "t.name", "t.roles", "t.expires_at", "t.revoked_at"}}
)

// The tables tied to their events by migration 00611.
var (
	// BreakGlass: a break-glass grant's clinician, patient, sealed reason (its ciphertext),
	// opening, expiry, closing and review.
	BreakGlass = Spec{Table: "auth_break_glass", Key: "t.id::text",
		Names: []string{"user_id", "patient_id", "reason_sealed", "opened_at", "expires_at", "closed_at", "reviewed_at", "reviewed_by"},
		Cols:  []string{"t.user_id", "t.patient_id", "t.reason_sealed", "t.opened_at", "t.expires_at", "t.closed_at", "t.reviewed_at", "t.reviewed_by"}}
	// EnrollmentTokens: a device enrollment link (keyed by the hex SHA-256 of its token, which
	// is all the database holds of it): its device, issue, expiry and use.
	EnrollmentTokens = Spec{Table: "devices_enrollment_tokens", Key: "encode(t.token_hash, 'hex')",
		Names: []string{"device_id", "created_at", "expires_at", "used_at"},
		Cols:  []string{"t.device_id", "t.created_at", "t.expires_at", "t.used_at"}}
	// PatientRuleSettings: a patient's NEWS2 SpO2 scale and documented oxygen, when and by whom.
	PatientRuleSettings = Spec{Table: "rules_patient_settings", Key: "t.patient_id::text",
		Names: []string{"spo2_scale", "on_oxygen", "updated_at", "updated_by"},
		Cols:  []string{"t.spo2_scale", "t.on_oxygen", "t.updated_at", "t.updated_by"}}
	// WardNEWS2Settings: the parameters a ward charts by hand and how long a charted value
	// counts, when and by whom.
	WardNEWS2Settings = Spec{Table: "rules_ward_settings", Key: "t.ward_id::text",
		Names: []string{"charted", "charted_max_age_seconds", "updated_at", "updated_by"},
		Cols:  []string{"t.charted", "t.charted_max_age_seconds", "t.updated_at", "t.updated_by"}}
)

// All lists the audited tables.
var All = []Spec{Devices, DeviceAssignments, Patients, Users, PolicyRules, ServiceAccounts, APITokens,
	BreakGlass, EnrollmentTokens, PatientRuleSettings, WardNEWS2Settings}

// Ref is a row's name in a payload and in findings: "<table>/<key>".
func (s Spec) Ref(key string) string { return s.Table + "/" + key }

// Reader is what Rows needs of a transaction or pool.
type Reader interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Querier is what Stamp needs of a transaction.
type Querier interface {
	Reader
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Row is one audited row as read back.
type Row struct {
	Key     string
	EventID *uuid.UUID // audit_event_id (nil: none)
	Stored  []byte     // audit_digest as stored
	Digest  [32]byte   // recomputed from the row's audited columns
}

func (s Spec) query(where string) string {
	q := "SELECT " + s.Key + ", t.audit_event_id, t.audit_digest"
	for _, c := range s.Cols {
		q += ", " + c
	}
	return q + " FROM " + s.Table + " t " + where + " ORDER BY 1"
}

// Rows calls fn with every row of the table, in key order.
func (s Spec) Rows(ctx context.Context, q Reader, fn func(Row) error) error {
	return s.rows(ctx, q, "", nil, fn)
}

func (s Spec) rows(ctx context.Context, q Reader, where string, args []any, fn func(Row) error) error {
	rows, err := q.Query(ctx, s.query(where), args...)
	if err != nil {
		return fmt.Errorf("%s: %w", s.Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return fmt.Errorf("%s: %w", s.Table, err)
		}
		r := Row{}
		r.Key, _ = vals[0].(string)
		if id, ok := vals[1].([16]byte); ok {
			u := uuid.UUID(id)
			r.EventID = &u
		}
		r.Stored, _ = vals[2].([]byte)
		if r.Digest, err = Digest(s.Table, s.Names, vals[3:]); err != nil {
			return fmt.Errorf("%s %s: %w", s.Table, r.Key, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: %w", s.Table, err)
	}
	return nil
}

// ErrNoRow is returned by Stamp when the row does not exist.
var ErrNoRow = errors.New("rowdigest: no such row")

// Stamp computes the digest of the row key of s in tx (after the action changed it), stores
// event and the digest in the row, and returns the digest (hex) for the event's payload.
func (s Spec) Stamp(ctx context.Context, tx Querier, key string, event uuid.UUID) (string, error) {
	var d [32]byte
	n := 0
	err := s.rows(ctx, tx, "WHERE "+s.Key+" = $1", []any{key}, func(r Row) error {
		d, n = r.Digest, n+1
		return nil
	})
	if err != nil {
		return "", err
	}
	if n != 1 {
		return "", fmt.Errorf("stamp %s: %w", s.Ref(key), ErrNoRow)
	}
	if _, err := tx.Exec(ctx, "UPDATE "+s.Table+" t SET audit_event_id = $2, audit_digest = $3 WHERE "+s.Key+" = $1", key, event, d[:]); err != nil {
		return "", fmt.Errorf("stamp %s: %w", s.Ref(key), err)
	}
	return hex.EncodeToString(d[:]), nil
}

// Digests collects the digests one event commits to (its payload's PayloadKey).
type Digests map[string]string

// Stamp stamps the row key of s with event and adds its digest.
func (ds Digests) Stamp(ctx context.Context, tx Querier, s Spec, key string, event uuid.UUID) error {
	d, err := s.Stamp(ctx, tx, key, event)
	if err != nil {
		return err
	}
	ds[s.Ref(key)] = d
	return nil
}

// Deleted records that the event's action deleted the row key of s.
func (ds Digests) Deleted(s Spec, key string) { ds[s.Ref(key)] = Deleted }

// Digest returns the digest of one row: table, the audited columns' names and their values
// as pgx decodes them (nil, string, []byte, [16]byte, time.Time, bool, integers, []any).
func Digest(table string, names []string, vals []any) ([32]byte, error) {
	if len(names) != len(vals) {
		return [32]byte{}, fmt.Errorf("rowdigest: %d names, %d values", len(names), len(vals))
	}
	b := append([]byte("vigil-row-v1\x00"), table...)
	b = append(b, 0)
	for i, v := range vals {
		b = append(b, names[i]...)
		b = append(b, 0)
		var err error
		if b, err = appendValue(b, v); err != nil {
			return [32]byte{}, fmt.Errorf("rowdigest: %s.%s: %w", table, names[i], err)
		}
	}
	return sha256.Sum256(b), nil
}

func appendValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, 0), nil
	case string:
		b = binary.BigEndian.AppendUint32(append(b, 's'), uint32(len(x)))
		return append(b, x...), nil
	case []byte:
		b = binary.BigEndian.AppendUint32(append(b, 'b'), uint32(len(x)))
		return append(b, x...), nil
	case [16]byte:
		return append(append(b, 'u'), x[:]...), nil
	case uuid.UUID:
		return append(append(b, 'u'), x[:]...), nil
	case time.Time:
		return binary.BigEndian.AppendUint64(append(b, 't'), uint64(x.UnixMicro())), nil
	case bool:
		if x {
			return append(b, 'o', 1), nil
		}
		return append(b, 'o', 0), nil
	case int16:
		return binary.BigEndian.AppendUint64(append(b, 'i'), uint64(int64(x))), nil
	case int32:
		return binary.BigEndian.AppendUint64(append(b, 'i'), uint64(int64(x))), nil
	case int64:
		return binary.BigEndian.AppendUint64(append(b, 'i'), uint64(x)), nil
	case []any:
		b = binary.BigEndian.AppendUint32(append(b, 'a'), uint32(len(x)))
		for _, e := range x {
			var err error
			if b, err = appendValue(b, e); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	return nil, fmt.Errorf("unsupported value type %T", v)
}
