// Package internal holds plumbing shared by every layer (the schema and test databases, the
// background-loop ticker, CPU accounting for the load tools); it imports nothing of Vigil's
// domain packages, so any package may use it.
package internal
