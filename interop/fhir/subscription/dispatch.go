package subscription

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/interop/fhir/api"
)

// Run follows the hub and dispatches every event until ctx ends. It takes only the events
// this process published (core.Filter.Local): with several replicas on one database each
// event — an upload's observations, published only on the replica that stored them, or an
// alarm, published by one replica and relayed to the others — is dispatched exactly once, by
// the replica that published it. When the hub drops the dispatcher (it fell behind), the
// events of the gap are not notified: Run logs it and subscribes again. Run also sends the
// heartbeats due (Heartbeats) every Config.HeartbeatTick.
func (s *Service) Run(ctx context.Context) error {
	if s.cfg.Hub == nil {
		return errors.New("fhir subscription: Config.Hub is required to run")
	}
	types := map[string]bool{}
	for _, t := range Topics {
		types[t.Event] = true
	}
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); s.heartbeatLoop(ctx) }()
	defer func() { <-hbDone }()
	for ctx.Err() == nil {
		sub := s.cfg.Hub.Subscribe(core.Filter{Types: types, Local: true})
		s.follow(ctx, sub)
		sub.Close()
		if ctx.Err() == nil {
			s.cfg.Logger.ErrorContext(ctx, "fhir subscriptions: the live stream dropped the dispatcher; events of the gap are not notified, resubscribing")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// heartbeatLoop sends the heartbeats due every Config.HeartbeatTick until ctx ends.
func (s *Service) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.Heartbeats(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Logger.WarnContext(ctx, "fhir subscriptions: heartbeats not sent", slog.String("error", err.Error()))
			}
		}
	}
}

func (s *Service) follow(ctx context.Context, sub *core.Subscription) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				return
			}
			if _, err := s.Dispatch(ctx, ev); err != nil && ctx.Err() == nil {
				s.cfg.Logger.WarnContext(ctx, "fhir subscriptions: event not notified", slog.String("type", ev.Type),
					slog.Uint64("event_id", ev.ID), slog.String("error", err.Error()))
			}
		}
	}
}

func (s *Service) invalidate() {
	s.mu.Lock()
	s.loaded = time.Time{}
	s.mu.Unlock()
}

// activeSubs returns the active Subscriptions, reloaded at most every Config.Refresh (wall
// time: a cache's age, not a clinical time, so not Config.Now).
func (s *Service) activeSubs(ctx context.Context) ([]Subscription, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if !s.loaded.IsZero() && now.Sub(s.loaded) < s.cfg.Refresh {
		return s.active, nil
	}
	rows, err := s.cfg.Pool.Query(ctx, selectSubs+" WHERE status = 'active'")
	if err != nil {
		return nil, fmt.Errorf("fhir subscription: load: %w", err)
	}
	subs, err := pgx.CollectRows(rows, scanSub)
	if err != nil {
		return nil, fmt.Errorf("fhir subscription: load: %w", err)
	}
	s.active, s.loaded = subs, now
	return subs, nil
}

// focusOf returns the topic an event triggers and its focus resources' ids.
func focusOf(ev core.Event) (Topic, []string, error) {
	switch ev.Type {
	case TopicVitalSigns.Event:
		var data struct {
			Observations []core.Observation `json:"observations"`
		}
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			return Topic{}, nil, fmt.Errorf("decode observations event: %w", err)
		}
		seen := map[string]bool{}
		var ids []string
		for _, o := range data.Observations {
			id := api.ObservationIDOf(ev.PatientID, o.Code, o.EffectiveAt)
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
		return TopicVitalSigns, ids, nil
	case TopicAlarmFlag.Event:
		var t alarms.Transition
		if err := json.Unmarshal(ev.Data, &t); err != nil || t.Alarm.ID == uuid.Nil {
			return Topic{}, nil, fmt.Errorf("decode alarm event: %v", err)
		}
		return TopicAlarmFlag, []string{t.Alarm.ID.String()}, nil
	}
	return Topic{}, nil, nil
}

// Dispatch notifies one hub event to the Subscriptions it matches (topic, and patient when
// they name one), and returns how many deliveries were enqueued. For a full-resource
// Subscription, each resource is read with the owner's rights at this moment (Policy): one
// the owner may not read now is notified id-only (its reference, never its content).
func (s *Service) Dispatch(ctx context.Context, ev core.Event) (int, error) {
	topic, ids, err := focusOf(ev)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	return s.notify(ctx, topic, ev.PatientID, ids, 0)
}

// errNotEnqueued marks a failure of notify after which none of its notifications was
// enqueued (the Subscriptions could not be loaded, or the enqueue failed): the durable
// dispatcher reads the row again.
var errNotEnqueued = errors.New("notifications not enqueued")

// notify enqueues, for every active Subscription to topic (and to patient, when it names
// one), the notification of the focus resources ids of patient, and returns how many. With
// txid (the durable dispatcher: the transaction that stored the row), a Subscription whose
// creating transaction's snapshot already saw it is left out: it was stored before.
func (s *Service) notify(ctx context.Context, topic Topic, patient uuid.UUID, ids []string, txid uint64) (int, error) {
	subs, err := s.activeSubs(ctx)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errNotEnqueued, err)
	}
	var out []core.Event
	var errs []error
	for _, sub := range subs {
		if sub.Topic.URL != topic.URL || (sub.Patient != uuid.Nil && sub.Patient != patient) {
			continue
		}
		if txid != 0 && sub.created != nil && sub.created.sees(txid) {
			continue // stored before the Subscription was created
		}
		focus := make([]Focus, len(ids))
		for i, id := range ids {
			focus[i] = Focus{Type: topic.Resource, ID: id}
		}
		if sub.Content == ContentFullResource {
			if err := s.fill(ctx, sub, patient, focus); err != nil {
				errs = append(errs, fmt.Errorf("Subscription/%s: %w", sub.ID, err))
				continue
			}
		}
		var total int64
		at := s.cfg.Now()
		if err := s.cfg.Pool.QueryRow(ctx, "UPDATE interop_fhir_subscriptions SET events = events + $2, last_sent_at = $3 WHERE id = $1 AND status = 'active' RETURNING events",
			sub.ID, len(focus), at).Scan(&total); err != nil {
			if !errors.Is(err, pgx.ErrNoRows) { // deleted meanwhile: nothing to send
				errs = append(errs, fmt.Errorf("Subscription/%s: count events: %w", sub.ID, err))
			}
			continue
		}
		body, err := RenderNotification(Notification{Sub: sub, Focus: focus, First: total - int64(len(focus)) + 1, Total: total, At: at})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, core.Event{Type: EventType(sub.ID), PatientID: patient, At: at, Body: body})
	}
	n, err := s.cfg.Webhooks.EnqueueWebhooks(ctx, out...)
	if err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", errNotEnqueued, err))
	}
	return n, errors.Join(errs...)
}

// fill reads each focus resource with the owner's rights now; those it may not read stay
// references only.
func (s *Service) fill(ctx context.Context, sub Subscription, patient uuid.UUID, focus []Focus) error {
	ok, err := s.cfg.Policy.MayRead(ctx, sub.Owner, sub.Topic.Resource, patient)
	if err != nil || !ok {
		return err
	}
	c := ownerCaller{s: s, owner: sub.Owner}
	for i := range focus {
		res, err := s.cfg.Resources.Read(ctx, c, focus[i].Type, focus[i].ID)
		if errors.Is(err, api.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		focus[i].Resource = res.Resource
	}
	return nil
}

// ownerCaller is the owner as an api.Caller: what the policy lets it read now.
type ownerCaller struct {
	s     *Service
	owner Owner
}

func (c ownerCaller) MayRead(ctx context.Context, obj string, patient uuid.UUID) (bool, error) {
	typ := map[string]string{api.ObjObservation: "Observation", api.ObjAlarm: "Flag", api.ObjPatient: "Patient"}[obj]
	if typ == "" {
		return false, nil
	}
	return c.s.cfg.Policy.MayRead(ctx, c.owner, typ, patient)
}

func (c ownerCaller) Visible(context.Context) (bool, []uuid.UUID, error) { return false, nil, nil }
