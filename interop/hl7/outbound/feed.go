package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/interop/hl7"
)

// FeedConfig configures a Feed.
type FeedConfig struct {
	// Core is the clinical core: its hub announces each committed upload's observations, its
	// patients give PID and PV1. Required.
	Core *core.Service
	// Sender delivers the messages. Required.
	Sender *Sender
	// Facility is MSH-4; ReceivingApplication and ReceivingFacility MSH-5 and MSH-6.
	Facility, ReceivingApplication, ReceivingFacility string
	// Logger receives what the feed could not send. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Feed turns every upload's newly stored observations, and every change of an alarm's state
// or severity, into one ORU^R01 for its patient and hands it to the Sender (ordered per patient, ACKed, retried, dead-lettered, audited). It
// follows the core's live stream: observations committed while the feed is not running (or
// that the hub dropped because the feed fell behind) are not sent — a durable cursor over
// the stored observations is the next step (docs/interop.md).
type Feed struct {
	cfg     FeedConfig
	seq     atomic.Uint64
	base    string
	skipped atomic.Int64
	gaps    atomic.Int64
}

// NewFeed returns a feed; Run starts it.
func NewFeed(cfg FeedConfig) (*Feed, error) {
	if cfg.Core == nil || cfg.Sender == nil {
		return nil, errors.New("outbound: FeedConfig.Core and Sender are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Feed{cfg: cfg, base: strconv.FormatInt(cfg.Now().UnixMilli(), 36)}, nil
}

// Skipped counts the uploads the feed could not turn into a message (an unknown patient, a
// patient without an MRN).
func (f *Feed) Skipped() int64 { return f.skipped.Load() }

// Run follows the hub until ctx ends. When the hub drops the feed (it fell behind the hub's
// buffer: the destination or the database was slower than the uploads for a while), the
// events of the gap are lost to the feed: Run logs it, counts it (Gaps) and subscribes again.
func (f *Feed) Run(ctx context.Context) error {
	types := map[string]bool{core.TypeObservations: true}
	for _, k := range alarmKinds {
		types["alarm."+string(k)] = true
	}
	for ctx.Err() == nil {
		f.follow(ctx, types)
		if ctx.Err() == nil {
			f.gaps.Add(1)
			f.cfg.Logger.ErrorContext(ctx, "ORU feed: the live stream dropped the feed (it fell behind, or the hub closed); events of the gap are not sent, resubscribing")
			select { // not in a tight loop on a hub that is closed
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// Gaps counts the times the hub dropped the feed.
func (f *Feed) Gaps() int64 { return f.gaps.Load() }

// follow sends the events of one subscription until ctx ends or the hub drops it.
func (f *Feed) follow(ctx context.Context, types map[string]bool) {
	sub := f.cfg.Core.Hub().Subscribe(core.Filter{Types: types})
	defer sub.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				return
			}
			if err := f.send(ctx, ev); err != nil && ctx.Err() == nil {
				f.skipped.Add(1)
				f.cfg.Logger.WarnContext(ctx, "ORU feed: event not sent", slog.String("patient_id", ev.PatientID.String()),
					slog.String("type", ev.Type), slog.String("error", err.Error()))
			}
		}
	}
}

// alarmKinds are the alarm transitions sent (changes of an alarm's state or severity; not
// reminders, re-triggers or escalation tiers, which are Vigil's own paging).
var alarmKinds = []alarms.TransitionKind{alarms.Opened, alarms.SeverityEscalated, alarms.SeverityDeescalate, alarms.Worsened,
	alarms.Acknowledged, alarms.Resolved}

// send builds and enqueues the ORU of one event: an upload's observations or an alarm's
// transition.
func (f *Feed) send(ctx context.Context, ev core.Event) error {
	if ev.Type != core.TypeObservations {
		var t alarms.Transition
		if err := json.Unmarshal(ev.Data, &t); err != nil || t.Alarm.ID == uuid.Nil {
			return fmt.Errorf("decode alarm event: %v", err)
		}
		p, err := f.cfg.Core.Patient(ctx, ev.PatientID)
		if err != nil {
			return err
		}
		m, err := f.build(p, nil, []hl7.ORUAlarm{{ID: t.Alarm.ID.String(), Rule: t.Alarm.RuleID, Severity: t.Alarm.Severity.String(),
			State: string(t.Alarm.State), Message: t.Alarm.Message, Time: t.At}})
		if err != nil {
			return err
		}
		return f.cfg.Sender.Enqueue(ctx, m)
	}
	var data struct {
		UploadID     uuid.UUID          `json:"upload_id"`
		Observations []core.Observation `json:"observations"`
	}
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		return fmt.Errorf("decode observations event: %w", err)
	}
	if len(data.Observations) == 0 {
		return nil
	}
	p, err := f.cfg.Core.Patient(ctx, ev.PatientID)
	if err != nil {
		return err
	}
	m, err := f.Build(p, data.Observations)
	if err != nil {
		return err
	}
	return f.cfg.Sender.Enqueue(ctx, m)
}

// Build writes the ORU^R01 of one patient's observations.
func (f *Feed) Build(p core.Patient, obs []core.Observation) (Message, error) {
	return f.build(p, obs, nil)
}

func (f *Feed) build(p core.Patient, obs []core.Observation, als []hl7.ORUAlarm) (Message, error) {
	ctl := "VGL" + f.base + strconv.FormatUint(f.seq.Add(1), 36)
	o := hl7.ORU{ControlID: ctl, Time: f.cfg.Now(), SendingFacility: f.cfg.Facility,
		ReceivingApplication: f.cfg.ReceivingApplication, ReceivingFacility: f.cfg.ReceivingFacility,
		Patient: hl7.ORUPatient{ID: p.ID.String(), MRN: p.PHI.MRN, FamilyName: p.PHI.FamilyName, GivenName: p.PHI.GivenName,
			BirthDate: p.PHI.BirthDate}}
	if p.WardID != nil {
		o.Patient.Ward = p.WardID.String()
	}
	for _, ob := range obs {
		ci, _ := core.LookupCode(ob.Code)
		o.Observations = append(o.Observations, hl7.ORUObservation{Code: ob.Code, Display: ci.Display, Value: ob.Value,
			Unit: ob.Unit, Time: ob.EffectiveAt, DeviceID: ob.DeviceID, Artifact: ob.Artifact})
	}
	o.Alarms = als
	b, err := hl7.BuildORU(o)
	if err != nil {
		return Message{}, err
	}
	return Message{PatientKey: p.ID.String(), ControlID: ctl, Bytes: b}, nil
}
