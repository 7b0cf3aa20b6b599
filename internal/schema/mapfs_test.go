package schema_test

import (
	"io/fs"
	"testing/fstest"
)

func mapFS(name, body string) fs.FS {
	return fstest.MapFS{name: &fstest.MapFile{Data: []byte(body)}}
}
