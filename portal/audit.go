package portal

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/core"
)

// The audit browser (quality and regulatory staff, issue #15): search the audit trail, see
// each event's place in the log with its inclusion proof checked against the latest signed
// checkpoint (on the server, and again in the browser by web/static/audit.js), a patient's
// access history, and audit-pack exports. Every page needs Casbin's audit read (export for
// packs); every search and event view is itself recorded as access.audit.read, as the API's
// are.

// formTime is the form's time format: an <input type="datetime-local"> value, in UTC.
const formTime = "2006-01-02T15:04"

// auditQuery is the search form as submitted.
type auditQuery struct {
	From, To, Actor, Patient, Action, Cursor string
}

// auditRow is one event of the result list.
type auditRow struct {
	ID                  uuid.UUID
	Time                string
	Actor, ActorDetail  string // the person's display name (or the kind and id), and the sign-in method
	Action, Outcome     string
	Reason              string
	Object              string
	Batch, LeafIndex    string
	Status, StatusLabel string
}

type auditData struct {
	base
	Q          auditQuery
	Errors     map[string]*formError // by field: "from", "to", "actor", "patient", "action"
	Rows       []auditRow
	Searched   bool
	NextURL    string
	ExportURL  string // the export of the same range (and patient), when the viewer may export
	MayExport  bool
	Checkpoint string // "checkpoint 12, tree size 340", or empty
	PatientRef string // the patient the list is narrowed to (access history), for the heading
	History    bool   // the page is a patient's access history
}

var actionFilterRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?$`)

// allowed reports whether pr may do act on the global object obj (audit, device, user, …).
func (p *Portal) allowed(pr *auth.Principal, obj, act string) bool {
	_, err := p.cfg.Auth.Enforcer().Allow(pr, act, auth.Target{Object: obj})
	return err == nil
}

// guard authenticates the request and checks that the viewer may do act on obj; it returns
// the principal and the session token (for the page's CSRF token), or an answer already sent
// (sign-in redirect, 403 page) as done=true.
func (p *Portal) guard(c echo.Context, obj, act string) (pr *auth.Principal, creds auth.Credentials, done bool, err error) {
	pr, creds, err = p.viewer(c)
	if err != nil {
		return nil, creds, true, err
	}
	if pr == nil {
		return nil, creds, true, toSignIn(c)
	}
	if !p.allowed(pr, obj, act) {
		return pr, creds, true, p.render(c, http.StatusForbidden, "denied.html",
			deniedData{base: p.base("Not allowed", pr, creds.SessionToken), Object: obj, Action: act})
	}
	return pr, creds, false, nil
}

type deniedData struct {
	base
	Object, Action string
}

// auditTrailRead records the viewer's read of the audit trail (access.audit.read), as the
// API's audit routes do.
func (p *Portal) auditTrailRead(ctx context.Context, c echo.Context, pr *auth.Principal, id string, detail map[string]any) error {
	detail["via"] = "portal"
	ev := audit.Event{Time: p.cfg.Now(), Actor: pr.Actor(), Action: "access.audit.read", RequestID: requestID(c),
		SourceAddr: c.RealIP(), Object: audit.Object{Type: "audit_trail", ID: id}, Outcome: audit.OutcomeSuccess, Payload: detail}
	if _, err := p.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		return fmt.Errorf("portal: audit read: %w", err)
	}
	return nil
}

// parseAuditQuery validates the search form into a filter; errs holds a coded error per
// field (nothing is searched then).
func (p *Portal) parseAuditQuery(ctx context.Context, q auditQuery) (chain.EventFilter, map[string]*formError, error) {
	f := chain.EventFilter{Limit: 50, Cursor: q.Cursor}
	errs := map[string]*formError{}
	for _, x := range []struct {
		field, v string
		dst      *time.Time
	}{{"from", q.From, &f.From}, {"to", q.To, &f.To}} {
		if x.v == "" {
			continue
		}
		t, err := time.Parse(formTime, x.v)
		if err != nil {
			if t, err = time.Parse(time.RFC3339, x.v); err != nil {
				errs[x.field] = &formError{Code: "invalid_time", Field: x.field, Message: "Enter a date and time (YYYY-MM-DDThh:mm, UTC)."}
				continue
			}
		}
		*x.dst = t.UTC()
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.To.After(f.From) {
		errs["to"] = &formError{Code: "range_reversed", Field: "to", Message: "The end must be after the start."}
	}
	if q.Action != "" && !actionFilterRE.MatchString(q.Action) {
		errs["action"] = &formError{Code: "invalid_action", Field: "action",
			Message: "An action is dotted lower-case words (alarm.acknowledged), or a prefix ending in .* (alarm.*)."}
	}
	f.Action = q.Action
	if q.Actor != "" {
		if id, err := uuid.Parse(q.Actor); err == nil {
			f.ActorID = id.String()
		} else if strings.Contains(q.Actor, "@") {
			u, err := p.cfg.Auth.UserByEmail(ctx, q.Actor)
			switch {
			case err == nil:
				f.ActorKind, f.ActorID = string(audit.ActorUser), u.ID.String()
			case auth.CodeOf(err) != "" || errors.Is(err, auth.ErrNotFound):
				errs["actor"] = &formError{Code: "unknown_actor", Field: "actor", Message: "No user has this e-mail address."}
			default:
				return f, nil, err
			}
		} else {
			errs["actor"] = &formError{Code: "invalid_actor", Field: "actor", Message: "Enter a user's e-mail address or an actor id."}
		}
	}
	if q.Patient != "" {
		id, err := p.patientRef(ctx, q.Patient)
		switch {
		case errors.Is(err, core.ErrNotFound):
			errs["patient"] = &formError{Code: "unknown_patient", Field: "patient", Message: "No patient has this MRN or id."}
		case err != nil:
			return f, nil, err
		default:
			f.ObjectType, f.ObjectID = "patient", id.String()
		}
	}
	return f, errs, nil
}

// patientRef resolves a patient id or MRN.
func (p *Portal) patientRef(ctx context.Context, ref string) (uuid.UUID, error) {
	if id, err := uuid.Parse(ref); err == nil {
		if _, err := p.cfg.Core.Patient(ctx, id); err != nil {
			return uuid.Nil, err
		}
		return id, nil
	}
	pt, err := p.cfg.Core.PatientByMRN(ctx, ref)
	if err != nil {
		return uuid.Nil, err
	}
	return pt.ID, nil
}

func queryOf(c echo.Context) auditQuery {
	v := c.QueryParams()
	g := func(k string) string { return strings.TrimSpace(v.Get(k)) }
	return auditQuery{From: g("from"), To: g("to"), Actor: g("actor"), Patient: g("patient"), Action: g("action"), Cursor: g("cursor")}
}

func (q auditQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"from": q.From, "to": q.To, "actor": q.Actor, "patient": q.Patient, "action": q.Action} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// auditSearch is GET /audit: the search form and, when a search was submitted, its results.
func (p *Portal) auditSearch(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjAudit, "read")
	if done {
		return err
	}
	data := auditData{base: p.base("Audit trail", pr, creds.SessionToken), Q: queryOf(c), MayExport: p.allowed(pr, auth.ObjAudit, "export")}
	return p.auditList(c, pr, data, len(c.QueryParams()) > 0)
}

// auditPatient is GET /audit/patients/:ref: who viewed or changed this patient's record
// (the events whose object is the patient, access.phi.* first of all), newest first.
func (p *Portal) auditPatient(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjAudit, "read")
	if done {
		return err
	}
	q := queryOf(c)
	q.Patient = c.Param("ref")
	data := auditData{base: p.base("Patient access history", pr, creds.SessionToken), Q: q, History: true,
		MayExport: p.allowed(pr, auth.ObjAudit, "export"), PatientRef: q.Patient}
	return p.auditList(c, pr, data, true)
}

func (p *Portal) auditList(c echo.Context, pr *auth.Principal, data auditData, search bool) error {
	ctx := c.Request().Context()
	if p.cfg.Audit == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the audit chain is not configured")
	}
	if !search {
		return p.render(c, http.StatusOK, "audit.html", data)
	}
	f, errs, err := p.parseAuditQuery(ctx, data.Q)
	if err != nil {
		return fmt.Errorf("portal: audit search: %w", err)
	}
	if len(errs) > 0 {
		data.Errors = errs
		return p.render(c, http.StatusUnprocessableEntity, "audit.html", data)
	}
	if err := p.auditTrailRead(ctx, c, pr, "", map[string]any{"query": data.Q.values().Encode()}); err != nil {
		return err
	}
	page, err := p.cfg.Audit.Events(ctx, f)
	if errors.Is(err, chain.ErrInvalidQuery) {
		data.Errors = map[string]*formError{"cursor": &formError{Code: "invalid_audit_query", Field: "cursor", Message: "This page of results is no longer valid: search again."}}
		return p.render(c, http.StatusUnprocessableEntity, "audit.html", data)
	}
	if err != nil {
		return fmt.Errorf("portal: audit search: %w", err)
	}
	cp, err := p.cfg.Audit.LatestCheckpoint(ctx)
	switch {
	case errors.Is(err, chain.ErrNoCheckpoint):
	case err != nil:
		return fmt.Errorf("portal: audit search: %w", err)
	default:
		data.Checkpoint = fmt.Sprintf("checkpoint %d, tree size %d", cp.ID, cp.Size)
	}
	names := p.actorNames(ctx)
	ids := make([]uuid.UUID, len(page.Events))
	for i, ev := range page.Events {
		ids[i] = ev.ID
	}
	proofs, err := p.cfg.Audit.EventProofs(ctx, ids) // each batch and its log proof read once
	if err != nil {
		return fmt.Errorf("portal: audit search: %w", err)
	}
	verdicts := chain.VerifyEventProofs(proofs, p.cfg.Audit.VerifierKey()) // the checkpoint's signature checked once
	for i, ev := range page.Events {
		data.Rows = append(data.Rows, p.auditRowOf(ev, proofs[i], verdicts[i], names))
	}
	data.Searched = true
	if page.NextCursor != "" {
		v := data.Q.values()
		v.Set("cursor", page.NextCursor)
		data.NextURL = c.Request().URL.Path + "?" + v.Encode()
	}
	if data.MayExport && !f.From.IsZero() { // an export needs the start of its range
		v := url.Values{}
		if !f.From.IsZero() {
			v.Set("from", f.From.Format(formTime))
		}
		if !f.To.IsZero() {
			v.Set("to", f.To.Format(formTime))
		}
		if data.Q.Patient != "" {
			v.Set("patient", data.Q.Patient)
		}
		data.ExportURL = "/audit/export?" + v.Encode()
	}
	return p.render(c, http.StatusOK, "audit.html", data)
}

// actorNames looks up people's display names for the page, once per page.
func (p *Portal) actorNames(ctx context.Context) func(kind string, id *string) (string, bool) {
	cache := map[string]string{}
	return func(kind string, id *string) (string, bool) {
		if id == nil {
			return kind + " (erased)", false
		}
		if kind != string(audit.ActorUser) {
			return kind + " " + *id, false
		}
		if n, ok := cache[*id]; ok {
			return n, n != *id
		}
		n := *id
		if uid, err := uuid.Parse(*id); err == nil {
			if u, err := p.cfg.Auth.User(ctx, uid); err == nil && u.Profile.DisplayName != "" {
				n = u.Profile.DisplayName
			}
		}
		cache[*id] = n
		return n, n != *id
	}
}

func (p *Portal) auditRowOf(ev chain.StoredEvent, pf chain.EventProof, verdict error, names func(string, *string) (string, bool)) auditRow {
	name, _ := names(ev.ActorKind, ev.ActorID)
	r := auditRow{ID: ev.ID, Time: ev.Time.UTC().Format("2006-01-02 15:04:05") + " UTC", Actor: name, ActorDetail: ev.ActorAuth,
		Action: ev.Action, Outcome: ev.Outcome, Reason: ev.Reason, Object: ev.ObjectType, Batch: "—", LeafIndex: "—",
		Status: "outbox", StatusLabel: "not yet sealed"}
	if ev.ObjectID != nil && *ev.ObjectID != "" {
		r.Object += " " + *ev.ObjectID
	}
	if ev.BatchID == nil {
		return r
	}
	r.Batch = ev.BatchID.String()[:8] + "…"
	if ev.BatchIndex != nil {
		r.Batch += " #" + strconv.Itoa(int(*ev.BatchIndex))
	}
	// Each row's proof, checked here against the latest signed checkpoint as on the event's
	// own page (docs/benchmarks.md).
	if pf.Batch != nil && pf.Batch.LeafIndex != nil {
		r.LeafIndex = strconv.FormatInt(*pf.Batch.LeafIndex, 10)
	}
	r.Status = pf.Status
	switch pf.Status {
	case "sealed":
		r.StatusLabel = "sealed, not yet in the log"
	case "integrated":
		r.StatusLabel = "in the log, awaiting the next checkpoint"
	case "proven":
		if verdict != nil {
			r.Status, r.StatusLabel = "proof_invalid", "proof does NOT verify"
		} else {
			r.Status, r.StatusLabel = "verified", fmt.Sprintf("verified (tree size %d)", pf.Batch.TreeSize)
		}
	}
	return r
}

// eventData is the event page's model.
type eventData struct {
	base
	Event      chain.StoredEvent
	Actor      string
	Payload    string
	Status     string
	Batch      string
	BatchIndex string
	BatchCount int
	LeafIndex  string
	TreeSize   uint64
	Verified   bool   // the server checked the proof under the latest checkpoint
	VerifyText string // "Verified under checkpoint N, tree size M", or why not
	VerifyCode string // "verified", "pending", "proof_invalid"
	ProofURL   string
	Proof      []proofLine
	History    string // the patient's access history, when the event is about a patient
}

type proofLine struct{ Label, Value string }

// auditEvent is GET /audit/events/:id: one event with its proof, checked on the server
// against the latest signed checkpoint and offered to the browser to check again.
func (p *Portal) auditEvent(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjAudit, "read")
	if done {
		return err
	}
	if p.cfg.Audit == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the audit chain is not configured")
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "event id must be a UUID (invalid_audit_query)")
	}
	ctx := c.Request().Context()
	if err := p.auditTrailRead(ctx, c, pr, id.String(), map[string]any{}); err != nil {
		return err
	}
	pf, err := p.cfg.Audit.Event(ctx, id)
	if errors.Is(err, chain.ErrEventNotFound) {
		return echo.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("portal: audit event: %w", err)
	}
	ev := pf.Event
	name, _ := p.actorNames(ctx)(ev.ActorKind, ev.ActorID)
	d := eventData{base: p.base("Audit event", pr, creds.SessionToken), Event: ev, Actor: name, Status: pf.Status,
		ProofURL: "/audit/events/" + id.String() + "/proof", Batch: "—", BatchIndex: "—", LeafIndex: "—"}
	if len(ev.Payload) > 0 {
		var b bytes.Buffer
		if jerr := jsonIndent(&b, ev.Payload); jerr == nil {
			d.Payload = b.String()
		}
	}
	if ev.ObjectType == "patient" && ev.ObjectID != nil {
		d.History = "/audit/patients/" + url.PathEscape(*ev.ObjectID)
	}
	d.Proof = append(d.Proof, proofLine{"Event leaf hash", hex.EncodeToString(pf.LeafHash)})
	if b := pf.Batch; b != nil {
		d.Batch, d.BatchIndex, d.BatchCount = b.ID.String(), strconv.Itoa(b.Index), b.Count
		d.Proof = append(d.Proof, proofLine{"Batch root", hex.EncodeToString(b.Root)})
		for i, h := range b.Proof {
			d.Proof = append(d.Proof, proofLine{"Batch proof " + strconv.Itoa(i+1), hex.EncodeToString(h)})
		}
		if b.LeafIndex != nil {
			d.LeafIndex = strconv.FormatInt(*b.LeafIndex, 10)
		}
		for i, h := range b.Inclusion {
			d.Proof = append(d.Proof, proofLine{"Log proof " + strconv.Itoa(i+1), hex.EncodeToString(h)})
		}
		d.TreeSize = b.TreeSize
	}
	switch pf.Status {
	case "proven":
		if _, verr := chain.VerifyEventProof(pf, p.cfg.Audit.VerifierKey()); verr != nil {
			d.VerifyCode, d.VerifyText = "proof_invalid", "The proof does NOT verify: "+verr.Error()
			break
		}
		d.Verified, d.VerifyCode = true, "verified"
		d.VerifyText = fmt.Sprintf("Verified under checkpoint %s, tree size %d", p.checkpointNumber(ctx, pf.Batch.TreeSize), pf.Batch.TreeSize)
	default:
		d.VerifyCode = "pending"
		d.VerifyText = map[string]string{
			"outbox":     "Not yet sealed into a batch: no proof yet.",
			"sealed":     "Sealed into a batch, not yet appended to the log: no log proof yet.",
			"integrated": "In the log, after the latest signed checkpoint: the proof comes with the next checkpoint.",
		}[pf.Status]
	}
	return p.render(c, http.StatusOK, "audit_event.html", d)
}

// checkpointNumber names the stored checkpoint of tree size size (the latest, normally).
func (p *Portal) checkpointNumber(ctx context.Context, size uint64) string {
	cp, err := p.cfg.Audit.LatestCheckpoint(ctx)
	if err == nil && cp.Size == size {
		return strconv.FormatInt(cp.ID, 10)
	}
	return "of size " + strconv.FormatUint(size, 10)
}

// proofJSON is what web/static/audit.js checks: the proof as the API serves it, hex and
// base64 made explicit, with the verifier key the portal trusts.
type proofJSON struct {
	Status      string   `json:"status"`
	Encoding    string   `json:"encoding"` // base64 of the event's canonical leaf encoding
	BatchID     string   `json:"batch_id"`
	BatchCount  int      `json:"batch_count"`
	BatchRoot   string   `json:"batch_root"` // hex
	BatchIndex  int      `json:"batch_index"`
	BatchProof  []string `json:"batch_proof"` // hex
	LeafIndex   int64    `json:"leaf_index"`
	LeafValue   string   `json:"leaf_value"` // base64 of the batch leaf
	Inclusion   []string `json:"inclusion"`  // hex
	TreeSize    uint64   `json:"tree_size"`
	Checkpoint  string   `json:"checkpoint"` // the signed note
	VerifierKey string   `json:"verifier_key"`
}

func hexAll(hs [][]byte) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = hex.EncodeToString(h)
	}
	return out
}

// auditEventProof is GET /audit/events/:id/proof: the raw proof for the browser's check.
func (p *Portal) auditEventProof(c echo.Context) error {
	pr, _, done, err := p.guard(c, auth.ObjAudit, "read")
	if done {
		return err
	}
	if p.cfg.Audit == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the audit chain is not configured")
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "event id must be a UUID (invalid_audit_query)")
	}
	ctx := c.Request().Context()
	if err := p.auditTrailRead(ctx, c, pr, id.String(), map[string]any{"what": "proof"}); err != nil {
		return err
	}
	pf, err := p.cfg.Audit.Event(ctx, id)
	if errors.Is(err, chain.ErrEventNotFound) {
		return echo.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("portal: audit proof: %w", err)
	}
	out := proofJSON{Status: pf.Status, Encoding: base64.StdEncoding.EncodeToString(pf.Encoding), VerifierKey: p.cfg.Audit.VerifierKey()}
	if b := pf.Batch; b != nil {
		out.BatchID, out.BatchCount, out.BatchRoot, out.BatchIndex = b.ID.String(), b.Count, hex.EncodeToString(b.Root), b.Index
		out.BatchProof, out.Inclusion = hexAll(b.Proof), hexAll(b.Inclusion)
		out.LeafValue, out.TreeSize, out.Checkpoint = base64.StdEncoding.EncodeToString(b.LeafValue), b.TreeSize, b.Checkpoint
		if b.LeafIndex != nil {
			out.LeafIndex = *b.LeafIndex
		}
	}
	return c.JSON(http.StatusOK, out)
}

// auditExport is GET /audit/export: a signed audit pack (chain.Export) of a time range, or
// of one patient's events in it, as a download. Needs audit export; recorded as
// audit.pack.exported.
func (p *Portal) auditExport(c echo.Context) error {
	pr, creds, done, err := p.guard(c, auth.ObjAudit, "export")
	if done {
		return err
	}
	if p.cfg.Audit == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the audit chain is not configured")
	}
	ctx := c.Request().Context()
	q := queryOf(c)
	f, errs, err := p.parseAuditQuery(ctx, auditQuery{From: q.From, To: q.To, Patient: q.Patient})
	if err != nil {
		return fmt.Errorf("portal: audit export: %w", err)
	}
	if f.From.IsZero() {
		errs["from"] = &formError{Code: "from_required", Field: "from", Message: "An export needs the start of its range."}
	}
	if f.To.IsZero() {
		f.To = p.cfg.Now().UTC()
		if !f.To.After(f.From) {
			errs["to"] = &formError{Code: "range_reversed", Field: "to", Message: "The end must be after the start."}
		}
	}
	if len(errs) > 0 {
		data := auditData{base: p.base("Audit trail", pr, creds.SessionToken), Q: q, Errors: errs, MayExport: true}
		return p.render(c, http.StatusUnprocessableEntity, "audit.html", data)
	}
	var buf bytes.Buffer
	opt := chain.ExportOptions{From: f.From, To: f.To, ObjectType: f.ObjectType, ObjectID: f.ObjectID}
	n, err := p.cfg.Audit.Export(ctx, &buf, opt)
	if errors.Is(err, chain.ErrNoCheckpoint) {
		return echo.NewHTTPError(http.StatusConflict, "no signed checkpoint yet: nothing can be exported (no_checkpoint)")
	}
	if err != nil {
		return fmt.Errorf("portal: audit export: %w", err)
	}
	ev := audit.Event{Time: p.cfg.Now(), Actor: pr.Actor(), Action: "audit.pack.exported", RequestID: requestID(c), SourceAddr: c.RealIP(),
		Object: audit.Object{Type: "audit_trail"}, Outcome: audit.OutcomeSuccess,
		Payload: map[string]any{"from": f.From, "to": f.To, "object_type": f.ObjectType, "object_id": f.ObjectID, "events": n, "via": "portal"}}
	if _, err := p.cfg.Recorder.RecordNow(ctx, ev); err != nil {
		return fmt.Errorf("portal: audit export: %w", err)
	}
	name := "vigil-audit-" + f.From.Format("20060102T1504") + "-" + f.To.Format("20060102T1504")
	if f.ObjectID != "" {
		name += "-patient-" + f.ObjectID[:8]
	}
	c.Response().Header().Set(echo.HeaderContentDisposition, `attachment; filename="`+name+`.pack"`)
	c.Response().Header().Set("X-Vigil-Pack-Events", strconv.Itoa(n))
	return c.Blob(http.StatusOK, "text/plain; charset=utf-8", buf.Bytes())
}
