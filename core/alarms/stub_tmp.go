package alarms

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
)

// Temporary: implementation lands in the next commits.
var errTODO = errors.New("alarms: not implemented yet")

func (s *Service) apply(context.Context, pgx.Tx, Signal) ([]Transition, error) { return nil, errTODO }
func (s *Service) acknowledge(context.Context, uuid.UUID, audit.Event, string) (Alarm, error) {
	return Alarm{}, errTODO
}
func (s *Service) silence(context.Context, uuid.UUID, audit.Event, string, time.Duration) (Alarm, error) {
	return Alarm{}, errTODO
}
func (s *Service) resolve(context.Context, uuid.UUID, audit.Event, string) (Alarm, error) {
	return Alarm{}, errTODO
}
func (s *Service) get(context.Context, uuid.UUID) (Alarm, error) { return Alarm{}, errTODO }
func (s *Service) list(context.Context, Filter) ([]Alarm, error) { return nil, errTODO }
func (s *Service) tick(context.Context) ([]Transition, error)    { return nil, errTODO }
