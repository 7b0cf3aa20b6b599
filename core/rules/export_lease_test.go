package rules

// WaitTakeOver waits for the take-over rebuilds started by Leases.Step (tests).
func (e *Engine) WaitTakeOver() { e.waitRebuilds() }
