package subscription

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/leader"
	"github.com/vigilhealth/vigil/interop/fhir/api"
	"github.com/vigilhealth/vigil/interop/storedfeed"
)

// CursorName is the durable dispatcher's cursor (interop_feed_cursors) and the name of its
// leadership (internal/leader).
const CursorName = "fhir-subscriptions"

// RunDurable dispatches every stored event until ctx ends, durably: instead of following the
// live stream it reads the stored rows in the order their transactions committed
// (interop/storedfeed: each upload's stored observations for the vital-signs topic, each
// alarm's opening for the alarm topic), from a cursor saved after each pass and resumed
// after a restart, so events stored while Vigil restarts, or while the dispatcher lags, are
// notified in order once it runs again. It dispatches on one replica per database, the one
// that leads "fhir-subscriptions" (internal/leader); the others wait and take over from the
// saved cursor. The first start creates the cursor at the present (events stored before are
// not notified). A pass stops between two rows when ctx ends, and the cursor is saved up to
// the last row notified: a graceful stop and restart notifies each event exactly once; a
// crash in the middle of a pass notifies the rows of that pass already notified again (with
// new event numbers). RunDurable also sends the heartbeats due, as Run does.
func (s *Service) RunDurable(ctx context.Context) error {
	el, err := leader.New(leader.Config{Pool: s.cfg.Pool, Name: CursorName, Interval: s.cfg.LeaderInterval, Logger: s.cfg.Logger})
	if err != nil {
		return err
	}
	bg := context.WithoutCancel(ctx)
	defer el.Close(bg)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); s.heartbeatLoop(ctx) }()
	defer func() { <-hbDone }()
	wake := make(chan struct{}, 1)
	if s.cfg.Hub != nil {
		wakeDone := make(chan struct{})
		go func() { defer close(wakeDone); s.wakeOnHub(ctx, wake) }()
		defer func() { <-wakeDone }()
	}
	var cur *storedfeed.Position // nil while not leading
	var stepped time.Time
	for {
		if stepped.IsZero() || time.Since(stepped) >= s.cfg.LeaderInterval {
			stepped = time.Now()
			if err := el.Step(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Logger.WarnContext(ctx, "fhir subscriptions: leader election", slog.String("error", err.Error()))
			}
		}
		full := false
		switch {
		case !el.Leader():
			cur = nil
		case cur == nil:
			p, created, err := storedfeed.StartCursor(ctx, s.cfg.Pool, CursorName, s.cfg.Now())
			if err != nil {
				if ctx.Err() == nil {
					s.cfg.Logger.ErrorContext(ctx, "fhir subscriptions: load the cursor", slog.String("error", err.Error()))
				}
				break
			}
			cur = &p
			s.cfg.Logger.InfoContext(ctx, "fhir subscriptions: dispatching from the stored rows", slog.Uint64("txid", p.TxID), slog.Bool("new", created))
			fallthrough
		default:
			var n int
			n, err = s.pass(ctx, cur)
			if err != nil && ctx.Err() == nil {
				s.cfg.Logger.ErrorContext(ctx, "fhir subscriptions: read the stored rows", slog.String("error", err.Error()))
			}
			if err := storedfeed.SaveCursor(bg, s.cfg.Pool, CursorName, *cur, s.cfg.Now()); err != nil {
				s.cfg.Logger.ErrorContext(ctx, "fhir subscriptions: save the cursor", slog.String("error", err.Error()))
			}
			full = n >= s.cfg.Batch
		}
		if full && ctx.Err() == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(s.cfg.PollInterval):
		}
	}
}

// wakeOnHub signals wake at every event of a topic on the hub (of any replica), so that a
// pass reads it soon; the events themselves are read from the database.
func (s *Service) wakeOnHub(ctx context.Context, wake chan<- struct{}) {
	types := map[string]bool{}
	for _, t := range Topics {
		types[t.Event] = true
	}
	for ctx.Err() == nil {
		sub := s.cfg.Hub.Subscribe(core.Filter{Types: types})
		func() {
			defer sub.Close()
			for {
				select {
				case <-ctx.Done():
					return
				case _, ok := <-sub.C:
					if !ok {
						return
					}
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
		}()
		if ctx.Err() == nil { // dropped (behind): nothing is lost, the rows are stored
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// pass reads the stored rows after *cur and notifies them in order, moving *cur over each
// row notified; it stops between two rows when ctx ends, and at a row none of whose
// notifications could be enqueued (read again at the next pass; the events since start of
// the Subscriptions it matched may then skip numbers). A notification that fails for one
// Subscription only (its owner's rights could not be checked) is logged and not retried.
// It returns the rows read.
func (s *Service) pass(ctx context.Context, cur *storedfeed.Position) (int, error) {
	rows, err := storedfeed.Read(ctx, s.cfg.Pool, *cur, s.cfg.Batch, storedfeed.AlarmOpenings)
	if err != nil {
		return 0, err
	}
	if err := storedfeed.Observations(ctx, s.cfg.Pool, rows); err != nil {
		return 0, err
	}
	// The Subscriptions are read again after the rows (not from the cache of Config.Refresh):
	// one created since the last pass gets the rows stored after it, and only those (its
	// creating transaction's snapshot, REQ-INT-052).
	s.mu.Lock()
	s.loaded = time.Time{}
	s.mu.Unlock()
	// A row once started is finished even if ctx ends meanwhile: its events count and its
	// notifications are enqueued together.
	bg := context.WithoutCancel(ctx)
	for i, r := range rows {
		if ctx.Err() != nil {
			return i, nil
		}
		topic, ids := focusOfRow(r)
		if len(ids) > 0 {
			if _, err := s.notify(bg, topic, r.Patient, ids, r.Pos.TxID); errors.Is(err, errNotEnqueued) {
				// Nothing enqueued: read this row again at the next pass.
				return i, err
			} else if err != nil {
				s.cfg.Logger.WarnContext(ctx, "fhir subscriptions: event not notified", slog.String("topic", topic.URL),
					slog.String("id", r.Pos.ID.String()), slog.String("error", err.Error()))
			}
		}
		*cur = r.Pos
	}
	return len(rows), nil
}

// focusOfRow returns the topic a stored row triggers and its focus resources' ids (those of
// Dispatch for the hub event the row's storing published).
func focusOfRow(r storedfeed.Row) (Topic, []string) {
	if r.Pos.Kind == storedfeed.KindAlarm {
		return TopicAlarmFlag, []string{r.Pos.ID.String()}
	}
	seen := map[string]bool{}
	var ids []string
	for _, o := range r.Obs {
		id := api.ObservationIDOf(r.Patient, o.Code, o.EffectiveAt)
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return TopicVitalSigns, ids
}
