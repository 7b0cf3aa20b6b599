// Package traceability builds the requirement ↔ test ↔ risk-control matrix from requirement files and go test -json output.
package traceability
