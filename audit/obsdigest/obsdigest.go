// Package obsdigest is the commitment an upload's audit event makes to the observations it
// stored (docs/audit.md "Observation values"). The event ("upload.accepted") carries
//
//   - obs_sha256: SHA-256 over the stored observations' canonical rows in canonical order, and
//   - obs_fp: base64 (standard, padded) of a short fingerprint of each canonical row, in the
//     same order (4 bytes each for up to 2,048 observations, 2 bytes each above), so that a
//     verifier who finds the digest changed can name the observation that changed.
//
// Canonical row of one observation (the stored columns of core_observations but upload_id):
//
//	patient_id (16 bytes) || uint16 length of code || code (UTF-8) ||
//	int64 effective_at in Unix microseconds || float64 value (IEEE 754 bits) || int16 flags
//
// all integers big-endian. Row hash h = SHA-256("vigil-obs-row-v1" || row). Canonical order:
// by patient_id, then code bytewise, then effective_at. obs_sha256 = SHA-256("vigil-obs-v1" ||
// uint32 count || h_1 || … || h_n); obs_fp = the first k bytes of each h_i.
//
// The digest lives in the authenticated event, so someone who can write to the database but
// does not hold the event key cannot change a stored value without verify noticing.
package obsdigest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/google/uuid"
)

// Row is one stored observation as the commitment sees it.
type Row struct {
	PatientID   uuid.UUID
	Code        string
	EffectiveAt time.Time // stored with microsecond precision: only the microseconds count
	Value       float64
	Flags       int16
}

// Commitment is what the upload's event carries (JSON field names as in the payload).
type Commitment struct {
	Digest       string `json:"obs_sha256"` // hex
	Fingerprints string `json:"obs_fp"`     // base64 of the rows' fingerprints, canonical order
}

// FingerprintSize is the bytes of fingerprint per row for an upload of n observations.
func FingerprintSize(n int) int {
	if n <= 2048 {
		return 4
	}
	return 2
}

// Hashed is a row with its hash, in the order Sort puts them.
type Hashed struct {
	Row
	Hash [32]byte
}

// Hash returns r's row hash.
func Hash(r Row) [32]byte {
	var buf [16 + 2 + 64 + 8 + 8 + 2]byte
	b := append(buf[:0], "vigil-obs-row-v1"...)
	b = append(b, r.PatientID[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Code)))
	b = append(b, r.Code...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.EffectiveAt.UnixMicro()))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(r.Value))
	b = binary.BigEndian.AppendUint16(b, uint16(r.Flags))
	return sha256.Sum256(b)
}

// Sort hashes rows and puts them in canonical order.
func Sort(rows []Row) []Hashed {
	hs := make([]Hashed, len(rows))
	for i, r := range rows {
		hs[i] = Hashed{Row: r, Hash: Hash(r)}
	}
	sort.Slice(hs, func(i, j int) bool { return less(&hs[i].Row, &hs[j].Row) })
	return hs
}

func less(a, b *Row) bool {
	if c := bytes.Compare(a.PatientID[:], b.PatientID[:]); c != 0 {
		return c < 0
	}
	if a.Code != b.Code {
		return a.Code < b.Code // Go compares strings bytewise
	}
	return a.EffectiveAt.UnixMicro() < b.EffectiveAt.UnixMicro()
}

// Commit returns the commitment to rows (in any order).
func Commit(rows []Row) Commitment {
	return CommitSorted(Sort(rows))
}

// CommitSorted returns the commitment to rows already in canonical order (from Sort).
func CommitSorted(hs []Hashed) Commitment {
	k := FingerprintSize(len(hs))
	d := sha256.New()
	d.Write([]byte("vigil-obs-v1"))
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(hs)))
	d.Write(n[:])
	fp := make([]byte, 0, k*len(hs))
	for i := range hs {
		d.Write(hs[i].Hash[:])
		fp = append(fp, hs[i].Hash[:k]...)
	}
	return Commitment{Digest: hex.EncodeToString(d.Sum(nil)), Fingerprints: base64.StdEncoding.EncodeToString(fp)}
}

// Changed compares the stored rows (canonical order, from Sort) with the commitment an
// event made (want) and returns the indexes (in hs) of the rows whose fingerprint differs
// from the one at the same place in the event. It returns ok = false when the commitment
// does not cover the same number of rows, or its fingerprints do not parse: then the digest
// alone says that something changed. An empty result with ok = true and a different digest
// means a change the fingerprints do not localize (a fingerprint collision).
func Changed(hs []Hashed, want Commitment) (idx []int, ok bool, err error) {
	fp, err := base64.StdEncoding.DecodeString(want.Fingerprints)
	if err != nil {
		return nil, false, fmt.Errorf("obsdigest: fingerprints: %w", err)
	}
	k := FingerprintSize(len(hs))
	if len(fp) != k*len(hs) {
		return nil, false, nil
	}
	for i := range hs {
		if !bytes.Equal(hs[i].Hash[:k], fp[i*k:(i+1)*k]) {
			idx = append(idx, i)
		}
	}
	return idx, true, nil
}
