// Package validation runs CI validation gates and installation/operational qualification checks, each gate a named, reported pass or fail.
package validation
