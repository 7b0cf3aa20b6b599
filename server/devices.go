package server

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/devices"
)

// Device routes: the upload endpoint and the device-side enrollment and rotation (devices
// authenticate by signature, not by session), and the administrators' registry API.
func (s *Server) mountDevices(api *echo.Group) {
	if s.cfg.Devices == nil {
		return
	}
	api.POST("/uploads", s.postUpload)
	api.GET("/uploads/receipt-key", s.getReceiptKey)
	api.GET("/uploads/:hash/proof", s.getUploadProof)
	api.GET("/uploads/:hash/receipt", s.getUploadReceipt)
	api.POST("/devices/enroll", s.postEnroll)
	api.POST("/devices/rotate", s.postRotate)

	api.POST("/devices", s.postDevice)
	api.GET("/devices", s.listDevices)
	api.GET("/devices/:id", s.getDevice)
	api.GET("/devices/:id/keys", s.getDeviceKeys)
	api.GET("/devices/:id/assignments", s.getDeviceAssignments)
	api.POST("/devices/:id/enrollment-tokens", s.postEnrollmentToken)
	api.POST("/devices/:id/suspend", s.setDeviceStatus(devices.StatusSuspended))
	api.POST("/devices/:id/reactivate", s.setDeviceStatus(devices.StatusActive))
	api.POST("/devices/:id/decommission", s.setDeviceStatus(devices.StatusDecommissioned))
	api.PUT("/devices/:id/patient", s.putDevicePatient)
}

// MIMECBOR is the media type of envelopes and receipts on the wire.
const MIMECBOR = "application/cbor"

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readDeviceBody reads a CBOR request body of at most limit bytes into a pooled buffer (put
// it back with bodyPool.Put after use). Larger bodies fail with the devices' ErrTooLarge.
func readDeviceBody(c echo.Context, limit int) (*bytes.Buffer, error) {
	ct := c.Request().Header.Get(echo.HeaderContentType)
	if ct != "" && !strings.HasPrefix(ct, MIMECBOR) && !strings.HasPrefix(ct, echo.MIMEOctetStream) {
		return nil, echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the envelope as application/cbor")
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	_, err := buf.ReadFrom(io.LimitReader(c.Request().Body, int64(limit)+1))
	if err != nil {
		bodyPool.Put(buf)
		return nil, bodyReadError(err)
	}
	return buf, nil
}

func deviceMeta(c echo.Context) devices.Meta {
	return devices.Meta{Transport: "http", RequestID: RequestID(c), SourceAddr: c.RealIP(), CorrelationID: CorrelationID(c)}
}

func (s *Server) uploadLimit() int {
	return s.cfg.Devices.MaxEnvelopeBytes()
}

// receiptJSON is the JSON form of a receipt (for clients that do not ask for CBOR).
type receiptJSON struct {
	Receipt    string `json:"receipt"` // base64 of the signed receipt's CBOR wire bytes
	UploadHash string `json:"upload_hash"`
	Device     string `json:"device"`
	Seq        uint64 `json:"seq"`
	ServerTime int64  `json:"server_time"`
	AuditEvent string `json:"audit_event"`
	KeyID      string `json:"key_id"`
	Replayed   bool   `json:"replayed"`
	LeafIndex  *int64 `json:"leaf_index,omitempty"`
}

// postUpload is POST /api/v1/uploads: the body is the upload envelope (CBOR). 201 with the
// receipt; 200 with the original receipt for an exact re-send. The receipt is CBOR when the
// client accepts application/cbor, JSON otherwise.
func (s *Server) postUpload(c echo.Context) error {
	// The rejected-request limits (rejectlimit.go): the source's state is taken before the
	// body is read, so that a throttled source's unreadable bodies are not audited either.
	srcEmpty, srcRetry := s.rejects.source.empty(sourceKey(c.RealIP()), s.cfg.Now())
	buf, err := readDeviceBody(c, s.uploadLimit())
	if err != nil {
		if srcEmpty {
			return s.admitUpload(c, nil, srcEmpty, srcRetry)
		}
		return err
	}
	defer bodyPool.Put(buf)
	if err := s.admitUpload(c, buf.Bytes(), srcEmpty, srcRetry); err != nil {
		return err
	}
	rc, err := s.cfg.Devices.Accept(c.Request().Context(), buf.Bytes(), deviceMeta(c))
	if err != nil {
		if d := claimedDevice(buf.Bytes()); d != "" {
			c.Set(throttleDeviceKey, d) // the rejection spends the named device's budget too
		}
		return err
	}
	SetActor(c, audit.Actor{Kind: audit.ActorDevice, ID: rc.Body.Device, AuthMethod: "device-signature"})
	status := http.StatusCreated
	if rc.Replayed {
		status = http.StatusOK // an exact re-send: no state change; the middleware records it
	} else {
		Audited(c) // upload.accepted was committed with the samples
	}
	return s.writeReceipt(c, status, rc)
}

// writeReceipt answers with a receipt: CBOR when the client accepts application/cbor, JSON
// otherwise.
func (s *Server) writeReceipt(c echo.Context, status int, rc *devices.Receipt) error {
	if strings.Contains(c.Request().Header.Get(echo.HeaderAccept), MIMECBOR) {
		return c.Blob(status, MIMECBOR, rc.Wire)
	}
	return c.JSON(status, receiptJSON{
		Receipt: base64.StdEncoding.EncodeToString(rc.Wire), UploadHash: hex.EncodeToString(rc.UploadHash[:]),
		Device: rc.Body.Device, Seq: rc.Body.Seq, ServerTime: rc.Body.ServerTime, AuditEvent: rc.Body.AuditEvent,
		KeyID: rc.Signed.KeyID, Replayed: rc.Replayed, LeafIndex: rc.Body.LeafIndex,
	})
}

// getReceiptKey is GET /api/v1/uploads/receipt-key: the key receipts are signed with.
func (s *Server) getReceiptKey(c echo.Context) error {
	id, pub, err := s.cfg.Devices.ReceiptKey()
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"key_id": id, "public_key_der": base64.StdEncoding.EncodeToString(der)})
}

// getUploadReceipt is GET /api/v1/uploads/{hash}/receipt: the receipt re-signed, with its
// leaf index once the upload is in the audit log.
func (s *Server) getUploadReceipt(c echo.Context) error {
	raw, err := hex.DecodeString(c.Param("hash"))
	if err != nil || len(raw) != 32 {
		return BadRequest("invalid_upload_hash", "the upload hash is 64 hex digits (SHA-256 of the canonical body)")
	}
	var h [32]byte
	copy(h[:], raw)
	rc, err := s.cfg.Devices.UploadReceipt(c.Request().Context(), h)
	if err != nil {
		return err
	}
	return s.writeReceipt(c, http.StatusOK, rc)
}

// getUploadProof is GET /api/v1/uploads/{hash}/proof.
func (s *Server) getUploadProof(c echo.Context) error {
	raw, err := hex.DecodeString(c.Param("hash"))
	if err != nil || len(raw) != 32 {
		return BadRequest("invalid_upload_hash", "the upload hash is 64 hex digits (SHA-256 of the canonical body)")
	}
	var h [32]byte
	copy(h[:], raw)
	ev, proof, err := s.cfg.Devices.UploadProof(c.Request().Context(), h)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"upload_hash": hex.EncodeToString(raw), "audit_event": ev, "proof": proof})
}

func (s *Server) postEnroll(c echo.Context) error {
	buf, err := readDeviceBody(c, 4096)
	if err != nil {
		return err
	}
	out, err := s.cfg.Devices.Enroll(c.Request().Context(), buf.Bytes(), deviceMeta(c))
	bodyPool.Put(buf)
	if err != nil {
		return err
	}
	Audited(c) // device.enrolled
	return c.JSON(http.StatusCreated, out)
}

func (s *Server) postRotate(c echo.Context) error {
	buf, err := readDeviceBody(c, 4096)
	if err != nil {
		return err
	}
	out, err := s.cfg.Devices.RotateKey(c.Request().Context(), buf.Bytes(), deviceMeta(c))
	bodyPool.Put(buf)
	if err != nil {
		return err
	}
	SetActor(c, audit.Actor{Kind: audit.ActorDevice, ID: out.DeviceID.String(), AuthMethod: "device-signature"})
	if out.Replayed {
		// The re-send of a rotation already applied: the same answer, no state change (the
		// middleware records the request).
		return c.JSON(http.StatusOK, out)
	}
	Audited(c) // device.key.rotated
	return c.JSON(http.StatusCreated, out)
}

func originOf(c echo.Context) devices.Origin {
	ev := EventFor(c)
	return devices.Origin{Actor: ev.Actor, RequestID: ev.RequestID, SourceAddr: ev.SourceAddr}
}

func deviceID(c echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return uuid.Nil, BadRequest("invalid_device_id", "the device id is a UUID")
	}
	return id, nil
}

func (s *Server) postDevice(c echo.Context) error {
	var nd devices.NewDevice
	if err := decodeJSON(c, &nd, false); err != nil {
		return err
	}
	d, err := s.cfg.Devices.Register(c.Request().Context(), originOf(c), nd)
	if err != nil {
		return err
	}
	Audited(c) // device.registered
	return c.JSON(http.StatusCreated, d)
}

func (s *Server) listDevices(c echo.Context) error {
	var after uuid.UUID
	if a := c.QueryParam("after"); a != "" {
		var err error
		if after, err = uuid.Parse(a); err != nil {
			return BadRequest(devices.CodeInvalidInput, "after must be a device id")
		}
	}
	limit := 100
	if l := c.QueryParam("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			return BadRequest(devices.CodeInvalidInput, "limit must be 1..1000")
		}
		limit = n
	}
	ds, err := s.cfg.Devices.List(c.Request().Context(), c.QueryParam("status"), after, limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"devices": ds})
}

func (s *Server) getDevice(c echo.Context) error {
	id, err := deviceID(c)
	if err != nil {
		return err
	}
	d, err := s.cfg.Devices.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (s *Server) getDeviceKeys(c echo.Context) error {
	id, err := deviceID(c)
	if err != nil {
		return err
	}
	ks, err := s.cfg.Devices.Keys(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": ks})
}

func (s *Server) getDeviceAssignments(c echo.Context) error {
	id, err := deviceID(c)
	if err != nil {
		return err
	}
	as, err := s.cfg.Devices.Assignments(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"assignments": as})
}

func (s *Server) postEnrollmentToken(c echo.Context) error {
	id, err := deviceID(c)
	if err != nil {
		return err
	}
	tok, exp, err := s.cfg.Devices.IssueEnrollmentToken(c.Request().Context(), originOf(c), id)
	if err != nil {
		return err
	}
	Audited(c) // device.enrollment_token.issued
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusCreated, map[string]any{"device_id": id, "token": tok, "expires_at": exp})
}

func (s *Server) setDeviceStatus(status string) echo.HandlerFunc {
	return func(c echo.Context) error {
		id, err := deviceID(c)
		if err != nil {
			return err
		}
		var body struct {
			Reason string `json:"reason"`
		}
		if err := decodeJSON(c, &body, true); err != nil { // the reason is optional
			return err
		}
		d, err := s.cfg.Devices.SetStatus(c.Request().Context(), originOf(c), id, status, body.Reason)
		if err != nil {
			return err
		}
		Audited(c) // device.reactivated / device.suspended / device.decommissioned
		return c.JSON(http.StatusOK, d)
	}
}

func (s *Server) putDevicePatient(c echo.Context) error {
	id, err := deviceID(c)
	if err != nil {
		return err
	}
	var body struct {
		PatientID *uuid.UUID `json:"patient_id"`
	}
	if err := decodeJSON(c, &body, false); err != nil {
		return err
	}
	d, err := s.cfg.Devices.AssignPatient(c.Request().Context(), originOf(c), id, body.PatientID)
	if err != nil {
		return err
	}
	Audited(c) // device.patient.assigned / device.patient.unassigned
	return c.JSON(http.StatusOK, d)
}
