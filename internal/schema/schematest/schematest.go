// Package schematest holds migrations of a simulated next version of Vigil, for the tests of
// rolling upgrades (internal/schema, cmd/vigil): they are never embedded in the binary.
package schematest

import (
	"embed"
	"io/fs"
)

//go:embed next/*.sql breaking/*.sql
var files embed.FS

// Next is the next version's migrations: 00811, an expand migration (a new table and a
// nullable column), and 00812, the contract migration that follows it (it drops the column the
// previous version wrote, compat=00811). Add them to the embedded set with schema.Set.Plus.
func Next() fs.FS { return sub("next") }

// Breaking is a migration that declares no phase (00813): no rolling upgrade past it.
func Breaking() fs.FS { return sub("breaking") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		panic(err)
	}
	return f
}
