package core

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// Webhook signature scheme (documented in docs/clinical.md): each POST carries
//
//	Vigil-Event-Id:  <delivery id, stable across retries>
//	Vigil-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<event id>.<body>")>
//
// A receiver recomputes the MAC, rejects a timestamp outside its tolerance (stale or replayed
// capture) and remembers event ids seen within the tolerance (replays, and our retries of a
// delivery it already processed).
const (
	HeaderSignature = "Vigil-Signature"
	HeaderEventID   = "Vigil-Event-Id"
)

// Webhook errors.
var (
	// ErrWebhookSignature: the signature header is missing, malformed or does not match.
	ErrWebhookSignature = errors.New("webhook signature invalid")
	// ErrWebhookStale: the signed timestamp is outside the receiver's tolerance.
	ErrWebhookStale = errors.New("webhook timestamp outside tolerance")
)

// SignWebhook returns the Vigil-Signature header value for body sent as event id at t.
func SignWebhook(secret []byte, t time.Time, id string, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(webhookMAC(secret, ts, id, body))
}

func webhookMAC(secret []byte, ts, id string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifyWebhook checks a received webhook: the signature header against secret, event id and
// body, and the timestamp within tolerance of now. Receivers MUST also reject an event id they
// have already processed.
func VerifyWebhook(secret []byte, header, id string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return fmt.Errorf("%w: malformed header", ErrWebhookSignature)
	}
	want := webhookMAC(secret, ts, id, body)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrWebhookSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed %s ago", ErrWebhookStale, d.Round(time.Second))
	}
	return nil
}

// WebhookConfig configures webhook delivery. Zero values take the documented defaults.
//
// Deliveries are posted by a client core builds itself (there is no way to pass another):
// every connection it opens is checked against the destination policy (see
// WebhookDestinationClass) at dial time, it never follows redirects and never uses a proxy.
type WebhookConfig struct {
	// AllowNets are networks webhooks may reach although the destination policy refuses
	// them by default (loopback, private, link-local, CGNAT, …), e.g. 10.20.0.0/16 for an
	// internal receiver or 127.0.0.0/8 for a receiver on the same host. An address inside
	// any of them is allowed whatever its class. Default: none.
	AllowNets []netip.Prefix
	// Timeout of one delivery attempt. Default 10 s.
	Timeout time.Duration
	// MaxAttempts before a delivery is dead-lettered. Default 8.
	MaxAttempts int
	// Backoff is the delay after the first failed attempt; it doubles after each further
	// failure up to MaxBackoff. Defaults 5 s and 1 h.
	Backoff, MaxBackoff time.Duration
	// Batch is how many due deliveries one DeliverDue call takes. Default 50.
	Batch int

	policy destinationPolicy
	client *http.Client
}

func (c *WebhookConfig) defaults() error {
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	allow := make([]netip.Prefix, 0, len(c.AllowNets))
	for _, p := range c.AllowNets {
		if !p.IsValid() {
			return fmt.Errorf("webhook allowed network %q is not a valid prefix", p)
		}
		allow = append(allow, p.Masked())
	}
	c.AllowNets = allow
	c.policy = destinationPolicy{allow: allow}
	c.client = c.policy.client(c.Timeout)
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.Backoff <= 0 {
		c.Backoff = 5 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Hour
	}
	if c.Batch <= 0 {
		c.Batch = 50
	}
	return nil
}

// WebhookSecrets derives each webhook's HMAC secret from a key kept outside the database (the
// key ring's webhook-hmac key), so that the database holds only the key version that derived
// it. Derive MUST be deterministic for (version, webhookID); version 0 means the latest key
// version, and the version used is returned. It MUST be safe for concurrent use.
type WebhookSecrets interface {
	Derive(ctx context.Context, version int, webhookID uuid.UUID) (secret []byte, usedVersion int, err error)
}

// Webhook is a registered receiver. Its secret is returned only when it is created.
type Webhook struct {
	ID         uuid.UUID `json:"id"`
	URL        string    `json:"url"`
	EventTypes []string  `json:"event_types"` // event types delivered; "*" for every type
	Active     bool      `json:"active"`
	CreatedAt  time.Time `json:"created_at"`
}

// Delivery is one event to one webhook.
type Delivery struct {
	ID            uuid.UUID       `json:"id"` // the Vigil-Event-Id
	WebhookID     uuid.UUID       `json:"webhook_id"`
	EventType     string          `json:"event_type"`
	Payload       json.RawMessage `json:"payload"`
	Status        string          `json:"status"` // pending, delivered, dead
	Attempts      int             `json:"attempts"`
	NextAttemptAt time.Time       `json:"next_attempt_at"`
	LastStatus    int             `json:"last_status"` // HTTP status of the last attempt (0: no answer)
	LastError     string          `json:"last_error"`
	CreatedAt     time.Time       `json:"created_at"`
	FinishedAt    *time.Time      `json:"finished_at,omitempty"`
}

// CreateWebhook registers a receiver for eventTypes and returns it with its new 32-byte
// secret (shown once), audited as "webhook.created".
//
// It refuses, with a *WebhookError (errors.Is ErrInvalidRequest; nothing stored; audited as
// "webhook.rejected" with the code as reason): a URL that is not absolute http(s)
// (CodeInvalidWebhookURL), one with user:password@ (CodeWebhookURLCredentials), an IP-literal
// or localhost host the destination policy refuses (CodeWebhookDestinationRefused), and an
// empty eventTypes (CodeInvalidWebhookEventTypes). Host names are not resolved here: the
// policy is enforced on every connection when delivering.
//
// An event type under DirectTypePrefix is refused here (CodeInvalidWebhookEventTypes): those
// are the feeds of CreateDirectWebhook.
func (s *Service) CreateWebhook(ctx context.Context, by audit.Event, rawURL string, eventTypes []string) (Webhook, []byte, error) {
	return s.createWebhook(ctx, by, rawURL, eventTypes, false)
}

// DirectTypePrefix starts the event types of direct webhooks: such a type reaches only the
// one webhook created for it by CreateDirectWebhook — a webhook subscribed to "*" does not
// receive it, and CreateWebhook refuses to subscribe to it — so that what one receiver is
// sent for its own feed (a FHIR Subscription's notifications, interop/fhir/subscription)
// reaches no other receiver.
const DirectTypePrefix = "fhir.subscription."

// DirectContentType is the Content-Type of the deliveries of direct webhooks (FHIR
// notification Bundles); other deliveries are application/json.
const DirectContentType = "application/fhir+json"

// CreateDirectWebhook is CreateWebhook for one event type under DirectTypePrefix (the URL
// checked and refused alike, audited alike); the caller names a new type (a fresh id).
func (s *Service) CreateDirectWebhook(ctx context.Context, by audit.Event, rawURL, eventType string) (Webhook, []byte, error) {
	if !strings.HasPrefix(eventType, DirectTypePrefix) || len(eventType) == len(DirectTypePrefix) {
		return Webhook{}, nil, fmt.Errorf("create direct webhook: %w: event type %q is not under %q", ErrInvalidRequest, eventType, DirectTypePrefix)
	}
	return s.createWebhook(ctx, by, rawURL, []string{eventType}, true)
}

func (s *Service) createWebhook(ctx context.Context, by audit.Event, rawURL string, eventTypes []string, direct bool) (Webhook, []byte, error) {
	u, err := s.cfg.Webhook.policy.checkWebhookURL(rawURL)
	if err == nil && len(eventTypes) == 0 {
		err = &WebhookError{Code: CodeInvalidWebhookEventTypes, Detail: "at least one event type (or \"*\")"}
	}
	if err == nil && !direct && slices.ContainsFunc(eventTypes, func(t string) bool { return strings.HasPrefix(t, DirectTypePrefix) }) {
		err = &WebhookError{Code: CodeInvalidWebhookEventTypes, Detail: "event types under \"" + DirectTypePrefix + "\" are a FHIR Subscription's own (create a Subscription at /fhir/R4/Subscription)"}
	}
	if err != nil {
		s.auditWebhookRejection(ctx, by, u, eventTypes, err)
		return Webhook{}, nil, fmt.Errorf("create webhook: %w", err)
	}
	now := s.cfg.Now().UTC().Truncate(time.Microsecond)
	w := Webhook{ID: uuid.Must(uuid.NewV7()), URL: u.String(), EventTypes: eventTypes, Active: true, CreatedAt: now}
	var secret, stored []byte
	var version any
	if s.cfg.WebhookSecrets != nil {
		sec, v, err := s.cfg.WebhookSecrets.Derive(ctx, 0, w.ID)
		if err != nil {
			return Webhook{}, nil, fmt.Errorf("create webhook: derive secret: %w", err)
		}
		secret, version = sec, v
	} else {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return Webhook{}, nil, fmt.Errorf("create webhook: %w", err)
		}
		stored = secret
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO core_webhooks (id, url, secret, secret_version, event_types, active, created_at) VALUES ($1,$2,$3,$4,$5,true,$6)",
			w.ID, w.URL, stored, version, w.EventTypes, now); err != nil {
			return err
		}
		detail := auditURL(u)
		detail["event_types"] = eventTypes
		return s.recordIn(ctx, tx, by, now, "webhook.created", "webhook", w.ID.String(), detail)
	})
	if err != nil {
		return Webhook{}, nil, fmt.Errorf("create webhook: %w", err)
	}
	return w, secret, nil
}

// Webhooks lists the registered webhooks.
func (s *Service) Webhooks(ctx context.Context) ([]Webhook, error) {
	rows, err := s.pool.Query(ctx, "SELECT id, url, event_types, active, created_at FROM core_webhooks ORDER BY created_at")
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Webhook])
}

// DeleteWebhook removes a webhook and its deliveries, audited as "webhook.deleted".
func (s *Service) DeleteWebhook(ctx context.Context, by audit.Event, id uuid.UUID) error {
	now := s.cfg.Now().UTC()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM core_webhooks WHERE id = $1", id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("webhook %s: %w", id, ErrNotFound)
		}
		return s.recordIn(ctx, tx, by, now, "webhook.deleted", "webhook", id.String(), nil)
	})
}

// EnqueueWebhooks stores one pending delivery of ev for every active webhook subscribed to its
// type ("*" covers every type but those under DirectTypePrefix), and returns how many. The
// body delivered is ev as JSON, or ev.Body when set.
func (s *Service) EnqueueWebhooks(ctx context.Context, evs ...Event) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	types := make([]string, len(evs))
	payloads := make([]string, len(evs))
	for i, ev := range evs {
		b := []byte(ev.Body)
		if b == nil {
			var err error
			if b, err = json.Marshal(ev); err != nil {
				return 0, fmt.Errorf("enqueue webhooks: %w", err)
			}
		} else if !json.Valid(b) {
			return 0, fmt.Errorf("enqueue webhooks: %w: event %s: Body is not JSON", ErrInvalidRequest, ev.Type)
		}
		types[i], payloads[i] = ev.Type, string(b)
	}
	now := s.cfg.Now().UTC()
	tag, err := s.pool.Exec(ctx, `INSERT INTO core_webhook_deliveries (id, webhook_id, event_type, payload, status, next_attempt_at, created_at)
		SELECT gen_random_uuid(), w.id, e.t, e.p::jsonb, 'pending', $3, $3
		FROM unnest($1::text[], $2::text[]) AS e(t, p)
		JOIN core_webhooks w ON w.active AND (e.t = ANY(w.event_types) OR ('*' = ANY(w.event_types) AND left(e.t, $4) <> $5))`,
		types, payloads, now, len(DirectTypePrefix), DirectTypePrefix)
	if err != nil {
		return 0, fmt.Errorf("enqueue webhooks: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// DeliverDue posts every pending delivery due at Config.Now() (up to WebhookConfig.Batch),
// signed, and records the outcome: delivered on a 2xx answer; otherwise retried after an
// exponential backoff, and dead-lettered (audited "webhook.delivery_dead") after MaxAttempts.
// It returns the deliveries attempted. Safe to run from several processes (rows are leased).
func (s *Service) DeliverDue(ctx context.Context) ([]Delivery, error) {
	wc := s.cfg.Webhook
	now := s.cfg.Now().UTC()
	rows, err := s.pool.Query(ctx, `UPDATE core_webhook_deliveries d SET next_attempt_at = $2
		FROM core_webhooks w WHERE w.id = d.webhook_id AND d.id IN (
			SELECT id FROM core_webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1
			ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
		RETURNING d.id, d.webhook_id, d.event_type, d.payload, d.attempts, w.url, w.secret, w.secret_version`,
		now, now.Add(2*wc.Timeout), wc.Batch)
	if err != nil {
		return nil, fmt.Errorf("deliver webhooks: claim: %w", err)
	}
	type job struct {
		d       Delivery
		url     string
		secret  []byte
		version *int
		refused bool // the destination policy refused the connection
	}
	var jobs []job
	for rows.Next() {
		var j job
		if err := rows.Scan(&j.d.ID, &j.d.WebhookID, &j.d.EventType, &j.d.Payload, &j.d.Attempts, &j.url, &j.secret, &j.version); err != nil {
			rows.Close()
			return nil, fmt.Errorf("deliver webhooks: %w", err)
		}
		jobs = append(jobs, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("deliver webhooks: %w", err)
	}
	for i := range jobs {
		if jobs[i].version == nil {
			continue
		}
		sec, err := s.webhookSecret(ctx, jobs[i].d.WebhookID, *jobs[i].version)
		if err != nil {
			// Not attempted: the lease expires and the delivery is tried again later.
			return nil, fmt.Errorf("deliver webhooks: secret of %s: %w", jobs[i].d.WebhookID, err)
		}
		jobs[i].secret = sec
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func(j *job) {
			defer wg.Done()
			defer func() { <-sem }()
			ct := "application/json"
			if strings.HasPrefix(j.d.EventType, DirectTypePrefix) {
				ct = DirectContentType
			}
			j.d.LastStatus, j.d.LastError, j.refused = s.post(ctx, j.url, j.secret, j.d.ID.String(), ct, j.d.Payload)
		}(&jobs[i])
	}
	wg.Wait()
	out := make([]Delivery, 0, len(jobs))
	var errs []error
	for _, j := range jobs {
		d := j.d
		d.Attempts++
		done := s.cfg.Now().UTC()
		switch {
		case d.LastStatus >= 200 && d.LastStatus < 300:
			d.Status, d.FinishedAt, d.NextAttemptAt = "delivered", &done, done
		case d.Attempts >= wc.MaxAttempts:
			d.Status, d.FinishedAt, d.NextAttemptAt = "dead", &done, done
		default:
			back := wc.Backoff << (d.Attempts - 1)
			if back > wc.MaxBackoff || back <= 0 {
				back = wc.MaxBackoff
			}
			d.Status, d.NextAttemptAt = "pending", done.Add(back)
		}
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `UPDATE core_webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4,
				last_status = $5, last_error = $6, finished_at = $7 WHERE id = $1`,
				d.ID, d.Status, d.Attempts, d.NextAttemptAt, d.LastStatus, d.LastError, d.FinishedAt); err != nil {
				return err
			}
			if d.Status == "pending" {
				return nil
			}
			action, outcome := "webhook.delivered", audit.OutcomeSuccess
			if d.Status == "dead" {
				action, outcome = "webhook.delivery_dead", audit.OutcomeFailure
			}
			_, err := s.cfg.Recorder.Record(ctx, tx, audit.Event{Time: done, Action: action, Outcome: outcome,
				Actor:  audit.Actor{Kind: audit.ActorService, ID: "core.webhooks", AuthMethod: "internal"},
				Object: audit.Object{Type: "webhook_delivery", ID: d.ID.String()}, Reason: reasonOf(d, j.refused),
				Payload: map[string]any{"webhook_id": d.WebhookID, "event_type": d.EventType, "attempts": d.Attempts, "last_status": d.LastStatus}})
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("deliver webhooks: record %s: %w", d.ID, err))
		}
		out = append(out, d)
	}
	return out, errors.Join(errs...)
}

func reasonOf(d Delivery, refused bool) string {
	if d.Status != "dead" {
		return ""
	}
	if refused {
		return "destination_refused"
	}
	if d.LastStatus != 0 {
		return "http_" + strconv.Itoa(d.LastStatus)
	}
	return "no_answer"
}

// post sends one signed attempt and returns the HTTP status (0 when there was no answer), an
// error description, and whether the destination policy refused the connection. A redirect
// is not followed: it is a failed attempt with its status.
func (s *Service) post(ctx context.Context, target string, secret []byte, id, contentType string, body []byte) (status int, errText string, refused bool) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Webhook.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error(), false
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set(HeaderEventID, id)
	req.Header.Set(HeaderSignature, SignWebhook(secret, s.cfg.Now(), id, body))
	resp, err := s.cfg.Webhook.client.Do(req)
	if err != nil {
		var de *WebhookDestinationError
		if errors.As(err, &de) {
			return 0, "destination refused: " + de.Error(), true
		}
		return 0, err.Error(), errors.Is(err, ErrWebhookDestination)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		loc := truncateUTF8(resp.Header.Get("Location"), 256)
		return resp.StatusCode, fmt.Sprintf("redirect not followed: %s (Location %q); webhooks never follow redirects", resp.Status, loc), false
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, resp.Status, false
	}
	return resp.StatusCode, "", false
}

// DeliveryFilter selects deliveries for Deliveries.
type DeliveryFilter struct {
	Status    string    // "pending", "delivered", "dead"; empty for all
	WebhookID uuid.UUID // zero for all
	Limit     int       // default 100, at most 1000
}

// Deliveries lists deliveries, newest first (the dead letters with Status "dead").
func (s *Service) Deliveries(ctx context.Context, f DeliveryFilter) ([]Delivery, error) {
	if f.Status != "" && !slices.Contains([]string{"pending", "delivered", "dead"}, f.Status) {
		return nil, fmt.Errorf("list deliveries: %w: status %q", ErrInvalidRequest, f.Status)
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	var st any
	if f.Status != "" {
		st = f.Status
	}
	rows, err := s.pool.Query(ctx, `SELECT id, webhook_id, event_type, payload, status, attempts, next_attempt_at,
		last_status, last_error, created_at, finished_at FROM core_webhook_deliveries
		WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR webhook_id = $2)
		ORDER BY created_at DESC, id DESC LIMIT $3`, st, nullUUID(f.WebhookID), f.Limit)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Delivery])
}

// Redeliver puts a dead-lettered delivery back in the queue (attempts reset, due now),
// audited as "webhook.redelivery_requested". ErrNotFound unless the delivery is dead.
func (s *Service) Redeliver(ctx context.Context, by audit.Event, id uuid.UUID) error {
	now := s.cfg.Now().UTC()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE core_webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
			finished_at = NULL WHERE id = $1 AND status = 'dead'`, id, now)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("dead delivery %s: %w", id, ErrNotFound)
		}
		return s.recordIn(ctx, tx, by, now, "webhook.redelivery_requested", "webhook_delivery", id.String(), nil)
	})
}

// RunWebhooks feeds every Hub event into the webhook outbox and delivers due deliveries every
// interval, until ctx ends. Failures are logged and retried.
func (s *Service) RunWebhooks(ctx context.Context, interval time.Duration) {
	// Local: with several replicas (HubRelay) each enqueues the events it published, once.
	sub := s.hub.Subscribe(Filter{Local: true})
	defer sub.Close()
	t := time.NewTicker(interval)
	defer t.Stop()
	var pending []Event
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if _, err := s.EnqueueWebhooks(ctx, pending...); err != nil && ctx.Err() == nil {
			s.cfg.Logger.ErrorContext(ctx, "core: enqueue webhooks", slog.Int("events", len(pending)), slog.String("error", err.Error()))
			return // kept, retried at the next tick
		}
		pending = pending[:0]
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				if sub.Dropped() {
					s.cfg.Logger.ErrorContext(ctx, "core: webhook feed fell behind the hub; resubscribing")
					sub = s.hub.Subscribe(Filter{Local: true})
					continue
				}
				return
			}
			pending = append(pending, ev)
			if len(pending) >= 100 {
				flush()
			}
		case <-t.C:
			flush()
			if _, err := s.DeliverDue(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Logger.ErrorContext(ctx, "core: deliver webhooks", slog.String("error", err.Error()))
			}
		}
	}
}

// webhookSecret derives (and caches) the secret of a webhook whose secret is not stored.
func (s *Service) webhookSecret(ctx context.Context, id uuid.UUID, version int) ([]byte, error) {
	type key struct {
		id uuid.UUID
		v  int
	}
	if sec, ok := s.secrets.Load(key{id, version}); ok {
		return sec.([]byte), nil
	}
	if s.cfg.WebhookSecrets == nil {
		return nil, errors.New("the webhook's secret is derived from the key ring, and none is configured (Config.WebhookSecrets)")
	}
	sec, _, err := s.cfg.WebhookSecrets.Derive(ctx, version, id)
	if err != nil {
		return nil, err
	}
	s.secrets.Store(key{id, version}, sec)
	return sec, nil
}
