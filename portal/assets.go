package portal

import (
	"crypto/sha256"
	"crypto/sha512"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"sort"
	"strings"

	"github.com/labstack/echo/v4"
)

// The portal's static files: the vendored npm files (web/vendor) and the portal's own
// (web/static). Both are embedded; nothing is fetched at run time.
//
//go:embed web/vendor/*.js web/vendor/*.css web/static
var webFS embed.FS

// AssetPrefix is the URL path under which assets are served.
const AssetPrefix = "/assets/"

// assetCacheControl is the caching of a content-hashed asset: its URL changes whenever its
// bytes do, so it may be kept for a year and never revalidated.
const assetCacheControl = "public, max-age=31536000, immutable"

// Asset is one embedded static file.
type Asset struct {
	Name        string // logical name used by templates, e.g. "htmx.min.js"
	URL         string // content-hashed URL, e.g. /assets/htmx.min.3f2a…9c.js
	Integrity   string // Subresource Integrity value, "sha384-…"
	ContentType string
	body        []byte
}

// Assets is the table of embedded assets by logical name and by URL.
type Assets struct {
	byName map[string]*Asset
	byURL  map[string]*Asset
}

// loadAssets reads every embedded file and computes its hashed URL and integrity.
func loadAssets() (*Assets, error) {
	a := &Assets{byName: map[string]*Asset{}, byURL: map[string]*Asset{}}
	for _, dir := range []string{"web/vendor", "web/static"} {
		ents, err := fs.ReadDir(webFS, dir)
		if err != nil {
			return nil, fmt.Errorf("portal assets: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			b, err := webFS.ReadFile(dir + "/" + e.Name())
			if err != nil {
				return nil, fmt.Errorf("portal assets: %w", err)
			}
			if _, dup := a.byName[e.Name()]; dup {
				return nil, fmt.Errorf("portal assets: %s is both vendored and the portal's own", e.Name())
			}
			as := newAsset(e.Name(), b)
			a.byName[as.Name] = as
			a.byURL[as.URL] = as
		}
	}
	return a, nil
}

func newAsset(name string, b []byte) *Asset {
	sum := sha256.Sum256(b)
	ext := path.Ext(name)
	base := strings.TrimSuffix(name, ext)
	si := sha512.Sum384(b)
	ct := mime.TypeByExtension(ext)
	switch ext { // not left to the system's MIME table
	case ".js":
		ct = "text/javascript; charset=utf-8"
	case ".css":
		ct = "text/css; charset=utf-8"
	}
	return &Asset{Name: name, URL: AssetPrefix + base + "." + hex.EncodeToString(sum[:])[:16] + ext,
		Integrity: "sha384-" + base64.StdEncoding.EncodeToString(si[:]), ContentType: ct, body: b}
}

// Get returns the asset of a logical name; it panics on an unknown name, so that a template
// naming a missing asset fails its first render in the tests, not in a browser.
func (a *Assets) Get(name string) *Asset {
	as, ok := a.byName[name]
	if !ok {
		panic(fmt.Sprintf("portal: no asset %q", name))
	}
	return as
}

// All returns every asset, by name.
func (a *Assets) All() []*Asset {
	out := make([]*Asset, 0, len(a.byName))
	for _, as := range a.byName {
		out = append(out, as)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// serve answers GET /assets/<name>.<hash>.<ext>: the bytes with a year of immutable caching;
// any other path under /assets/ is a 404 (an old hash is not served: its bytes are gone).
func (a *Assets) serve(c echo.Context) error {
	as, ok := a.byURL[c.Request().URL.Path]
	if !ok {
		return echo.ErrNotFound
	}
	h := c.Response().Header()
	h.Set(echo.HeaderCacheControl, assetCacheControl)
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set(echo.HeaderXContentTypeOptions, "nosniff")
	return c.Blob(http.StatusOK, as.ContentType, as.body)
}
