package rules

import (
	"context"
	"errors"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/alarms"
)

// Temporary: implementation lands in the next commits.
var errTODO = errors.New("rules: not implemented yet")

type engineState struct{}

func (e *Engine) init(context.Context) error { e.st = &engineState{}; return nil }
func (e *Engine) evaluate(context.Context, uuid.UUID, []Observation) (Result, error) {
	return Result{}, errTODO
}
func (e *Engine) tick(context.Context) ([]alarms.Transition, error) { return nil, errTODO }
func (e *Engine) checkpoint(context.Context) error                  { return nil }
func (e *Engine) rules(context.Context) ([]Rule, error)             { return nil, errTODO }
func (e *Engine) versions(context.Context, string) ([]Rule, error)  { return nil, errTODO }
func (e *Engine) createVersion(context.Context, audit.Event, Rule) (Rule, error) {
	return Rule{}, errTODO
}
func (e *Engine) setSpO2Scale(context.Context, audit.Event, uuid.UUID, int, string) error {
	return errTODO
}
