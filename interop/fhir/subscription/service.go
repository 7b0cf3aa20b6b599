package subscription

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/interop/fhir"
	"github.com/vigilhealth/vigil/interop/fhir/api"
)

// Owner is the principal that created a Subscription: its policy decides, at each event,
// whether a full resource may be sent.
type Owner struct {
	Kind    audit.ActorKind `json:"kind"`              // user or service
	ID      uuid.UUID       `json:"id"`                // user or service account id
	Subject string          `json:"subject"`           // the policy subject (user:<id>, token:<id>)
	TokenID uuid.UUID       `json:"token_id,omitzero"` // the API token, whose SMART scopes also apply
}

// Policy is the authorization decision point's view for Subscriptions (the server
// implements it over the one Casbin enforcer and the SMART scopes of tokens). Its answers
// MUST reflect the policy at the moment of the call; it MUST NOT record audit events.
type Policy interface {
	// MayRead reports whether owner may read the resources of type typ ("Observation",
	// "Flag") of patient now. An error is a failure to decide, never a refusal.
	MayRead(ctx context.Context, owner Owner, typ string, patient uuid.UUID) (bool, error)
	// MayReadAll reports whether owner may read typ of every patient now.
	MayReadAll(ctx context.Context, owner Owner, typ string) (bool, error)
}

// Webhooks is core's webhook machinery (core.Service).
type Webhooks interface {
	CreateDirectWebhook(ctx context.Context, by audit.Event, rawURL, eventType string) (core.Webhook, []byte, error)
	DeleteWebhook(ctx context.Context, by audit.Event, id uuid.UUID) error
	EnqueueWebhooks(ctx context.Context, evs ...core.Event) (int, error)
}

// Resources reads one FHIR resource for a caller (api.Service); ErrNotFound-wrapping when it
// does not exist or the caller may not read it.
type Resources interface {
	Read(ctx context.Context, c api.Caller, typ, id string) (api.Result, error)
}

// Config configures a Service.
type Config struct {
	// Pool is the installation's database. Required.
	Pool *pgxpool.Pool
	// Hub announces the events (core.Service.Hub()); required by Run; RunDurable, which
	// reads the stored rows, uses it only to wake up early.
	Hub *core.Hub
	// Webhooks creates, deletes and enqueues the deliveries. Required.
	Webhooks Webhooks
	// Resources renders full resources. Required.
	Resources Resources
	// Policy decides what owners may read. Required.
	Policy Policy
	// Recorder records creations and deletions. Required.
	Recorder audit.Recorder
	// Refresh is how often the dispatcher reloads the active Subscriptions (those created or
	// deleted on another replica are seen within it). Default 2 s.
	Refresh time.Duration
	// Logger reports what the dispatcher could not send. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// HeartbeatTick is how often Run looks for Subscriptions due a heartbeat. Default 1 s.
	HeartbeatTick time.Duration
	// PollInterval is how long RunDurable waits for new stored rows after a pass that found
	// less than Batch (an event on Hub, when set, wakes it earlier). Default 200 ms.
	PollInterval time.Duration
	// LeaderInterval is how often RunDurable steps its leader election. Default 2 s.
	LeaderInterval time.Duration
	// Batch bounds the stored rows RunDurable reads per pass. Default 500.
	Batch int
}

// Service manages Subscriptions and dispatches their notifications.
type Service struct {
	cfg Config

	mu     sync.Mutex
	active []Subscription
	loaded time.Time
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Pool == nil || cfg.Webhooks == nil || cfg.Resources == nil || cfg.Policy == nil || cfg.Recorder == nil {
		return nil, errors.New("fhir subscription: Config.Pool, Webhooks, Resources, Policy and Recorder are required")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HeartbeatTick <= 0 {
		cfg.HeartbeatTick = time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 200 * time.Millisecond
	}
	if cfg.LeaderInterval <= 0 {
		cfg.LeaderInterval = 2 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	return &Service{cfg: cfg}, nil
}

// ErrNotFound: no such Subscription (or one the caller may not manage).
var ErrNotFound = errors.New("fhir subscription: not found")

// Create parses body and creates the Subscription for owner: a full-resource one only when
// the owner may read the topic's resources of the patient it names (of every patient, when
// it names none); its endpoint passes core's destination checks (CreateDirectWebhook, which
// audits webhook.created or webhook.rejected); its handshake notification is enqueued (the
// first delivery of its webhook, before any event can be dispatched to it); then it is stored
// active, audited as fhir.subscription.created. base is the FHIR base URL the client used.
// Every refusal is an *Error (or core's *WebhookError), nothing stored.
func (s *Service) Create(ctx context.Context, by audit.Event, owner Owner, base string, body []byte) (Subscription, []byte, error) {
	req, err := Parse(body)
	if err != nil {
		return Subscription{}, nil, err
	}
	if req.Content == ContentFullResource {
		var ok bool
		if req.Patient != uuid.Nil {
			ok, err = s.cfg.Policy.MayRead(ctx, owner, req.Topic.Resource, req.Patient)
		} else {
			ok, err = s.cfg.Policy.MayReadAll(ctx, owner, req.Topic.Resource)
		}
		if err != nil {
			return Subscription{}, nil, fmt.Errorf("fhir subscription: policy: %w", err)
		}
		if !ok {
			return Subscription{}, nil, &Error{Status: 403, Problem: problem(CodePayloadNotAllowed, "forbidden", "Subscription.channel._payload",
				"full-resource needs the right to read the "+req.Topic.Resource+" resources of every patient the Subscription covers; use id-only")}
		}
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	sub := Subscription{ID: uuid.Must(uuid.NewV7()), Topic: req.Topic, Patient: req.Patient, Content: req.Content,
		Base: base, Reason: req.Reason, Status: "active", Owner: owner, Heartbeat: req.Heartbeat, CreatedAt: now}
	wh, secret, err := s.cfg.Webhooks.CreateDirectWebhook(ctx, by, req.Endpoint, EventType(sub.ID))
	if err != nil {
		var we *core.WebhookError
		if errors.As(err, &we) {
			return Subscription{}, nil, &Error{Status: 400, Problem: problem(we.Code, "invalid", "Subscription.channel.endpoint", we.Detail)}
		}
		return Subscription{}, nil, fmt.Errorf("fhir subscription: %w", err)
	}
	sub.WebhookID, sub.Endpoint = wh.ID, wh.URL
	var pid, tok, hb any
	if sub.Patient != uuid.Nil {
		pid = sub.Patient
	}
	if owner.TokenID != uuid.Nil {
		tok = owner.TokenID
	}
	if sub.Heartbeat > 0 {
		hb = sub.Heartbeat
	}
	// The handshake (events since start 0) goes to the webhook before the Subscription is
	// stored: no event can be dispatched to it before. Deleting the webhook on a failure
	// below deletes the handshake's delivery with it.
	err = s.enqueue(ctx, Notification{Sub: sub, Type: TypeHandshake, At: now})
	if err == nil {
		err = pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO interop_fhir_subscriptions (id, webhook_id, topic, patient_id, content, endpoint, base_url,
			reason, status, owner_kind, owner_id, owner_subject, owner_token, created_at, heartbeat_period, last_sent_at)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'active',$9,$10,$11,$12,$13,$14,$13)`,
				sub.ID, sub.WebhookID, sub.Topic.URL, pid, sub.Content, sub.Endpoint, sub.Base, sub.Reason,
				string(owner.Kind), owner.ID, owner.Subject, tok, now, hb); err != nil {
				return err
			}
			ev := by
			ev.Time, ev.Action, ev.Outcome = now, "fhir.subscription.created", audit.OutcomeSuccess
			ev.Object = audit.Object{Type: "fhir_subscription", ID: sub.ID.String()}
			ev.Payload = map[string]any{"topic": sub.Topic.URL, "content": sub.Content, "patient_id": pid, "webhook_id": sub.WebhookID,
				"endpoint_host": hostOf(sub.Endpoint), "owner": owner, "heartbeat_period": hb}
			_, err := s.cfg.Recorder.Record(ctx, tx, ev)
			return err
		})
	}
	if err != nil {
		if derr := s.cfg.Webhooks.DeleteWebhook(context.WithoutCancel(ctx), by, sub.WebhookID); derr != nil {
			err = errors.Join(err, derr)
		}
		return Subscription{}, nil, fmt.Errorf("fhir subscription: create: %w", err)
	}
	s.invalidate()
	return sub, secret, nil
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

func problem(code, typ, expr, msg string) fhir.Problem {
	return fhir.Problem{Code: code, Type: typ, Expression: expr, Message: msg}
}

const subCols = `id, webhook_id, topic, patient_id, content, endpoint, base_url, reason, status, owner_kind, owner_id,
	owner_subject, owner_token, events, created_at, heartbeat_period, created_snapshot::text`

const selectSubs = `SELECT ` + subCols + ` FROM interop_fhir_subscriptions`

func scanSub(r pgx.CollectableRow) (Subscription, error) {
	var s Subscription
	var topic, kind string
	var pid, tok *uuid.UUID
	var hb *int
	var snap *string
	err := r.Scan(&s.ID, &s.WebhookID, &topic, &pid, &s.Content, &s.Endpoint, &s.Base, &s.Reason, &s.Status, &kind,
		&s.Owner.ID, &s.Owner.Subject, &tok, &s.Events, &s.CreatedAt, &hb, &snap)
	if err != nil {
		return s, err
	}
	if snap != nil {
		if s.created, err = parseSnapshot(*snap); err != nil {
			return s, fmt.Errorf("Subscription/%s: created_snapshot: %w", s.ID, err)
		}
	}
	if hb != nil {
		s.Heartbeat = *hb
	}
	s.Topic, _ = LookupTopic(topic)
	s.Owner.Kind = audit.ActorKind(kind)
	if pid != nil {
		s.Patient = *pid
	}
	if tok != nil {
		s.Owner.TokenID = *tok
	}
	s.CreatedAt = s.CreatedAt.UTC()
	return s, nil
}

// Get returns one Subscription.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (Subscription, error) {
	rows, err := s.cfg.Pool.Query(ctx, selectSubs+" WHERE id = $1", id)
	if err != nil {
		return Subscription{}, fmt.Errorf("fhir subscription: %w", err)
	}
	sub, err := pgx.CollectExactlyOneRow(rows, scanSub)
	if errors.Is(err, pgx.ErrNoRows) {
		return Subscription{}, fmt.Errorf("Subscription/%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Subscription{}, fmt.Errorf("fhir subscription: %w", err)
	}
	return sub, nil
}

// List returns the Subscriptions, oldest first; those of one owner subject when subject is
// not empty.
func (s *Service) List(ctx context.Context, subject string) ([]Subscription, error) {
	var sub any
	if subject != "" {
		sub = subject
	}
	rows, err := s.cfg.Pool.Query(ctx, selectSubs+" WHERE ($1::text IS NULL OR owner_subject = $1) ORDER BY created_at, id LIMIT 1000", sub)
	if err != nil {
		return nil, fmt.Errorf("fhir subscription: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanSub)
	if err != nil {
		return nil, fmt.Errorf("fhir subscription: %w", err)
	}
	return out, nil
}

// Delete ends a Subscription: it is turned off (audited as fhir.subscription.deleted, in the
// same transaction), then its webhook is deleted with its pending deliveries (core audits
// webhook.deleted), which deletes the Subscription's row.
func (s *Service) Delete(ctx context.Context, by audit.Event, id uuid.UUID) error {
	sub, err := s.Get(ctx, id)
	if err != nil {
		return err
	}
	now := s.cfg.Now().UTC()
	err = pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE interop_fhir_subscriptions SET status = 'off' WHERE id = $1", id); err != nil {
			return err
		}
		ev := by
		ev.Time, ev.Action, ev.Outcome = now, "fhir.subscription.deleted", audit.OutcomeSuccess
		ev.Object = audit.Object{Type: "fhir_subscription", ID: id.String()}
		ev.Payload = map[string]any{"webhook_id": sub.WebhookID, "events": sub.Events}
		_, err := s.cfg.Recorder.Record(ctx, tx, ev)
		return err
	})
	if err != nil {
		return fmt.Errorf("fhir subscription: delete: %w", err)
	}
	s.invalidate()
	if err := s.cfg.Webhooks.DeleteWebhook(ctx, by, sub.WebhookID); err != nil && !errors.Is(err, core.ErrNotFound) {
		return fmt.Errorf("fhir subscription: delete webhook: %w", err)
	}
	return nil
}

// enqueue renders a notification and enqueues it on the Subscription's webhook.
func (s *Service) enqueue(ctx context.Context, n Notification) error {
	body, err := RenderNotification(n)
	if err != nil {
		return err
	}
	if _, err := s.cfg.Webhooks.EnqueueWebhooks(ctx, core.Event{Type: EventType(n.Sub.ID), PatientID: n.Sub.Patient, At: n.At, Body: body}); err != nil {
		return fmt.Errorf("fhir subscription: enqueue %s: %w", n.Type, err)
	}
	return nil
}

// Heartbeats enqueues a heartbeat notification (events since start as they stand) for every
// active Subscription that asked for one (backport-heartbeat-period) and was sent nothing
// for that period, and returns how many. Each is claimed by moving its last notification
// time in one statement, so with several replicas on one database each heartbeat is sent
// once. Run calls it every Config.HeartbeatTick.
func (s *Service) Heartbeats(ctx context.Context) (int, error) {
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	rows, err := s.cfg.Pool.Query(ctx, `UPDATE interop_fhir_subscriptions SET last_sent_at = $1::timestamptz
		WHERE status = 'active' AND heartbeat_period IS NOT NULL
		  AND COALESCE(last_sent_at, created_at) <= $1::timestamptz - make_interval(secs => heartbeat_period)
		RETURNING `+subCols, now)
	if err != nil {
		return 0, fmt.Errorf("fhir subscription: heartbeats: %w", err)
	}
	due, err := pgx.CollectRows(rows, scanSub)
	if err != nil {
		return 0, fmt.Errorf("fhir subscription: heartbeats: %w", err)
	}
	var errs []error
	n := 0
	for _, sub := range due {
		if err := s.enqueue(ctx, Notification{Sub: sub, Type: TypeHeartbeat, Total: sub.Events, At: now}); err != nil {
			errs = append(errs, fmt.Errorf("Subscription/%s: %w", sub.ID, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Status returns the answer of Subscription/<id>/$status (RenderStatus).
func (s *Service) Status(ctx context.Context, id uuid.UUID) ([]byte, error) {
	sub, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return RenderStatus(sub, s.cfg.Now())
}
