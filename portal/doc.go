// Package portal is Vigil's web portal for people: server-rendered pages (html/template)
// with htmx for partial updates and uPlot for charts, served by `vigil serve` at "/". It
// renders what the domain packages answer (core, core/alarms, core/rules, devices) and asks
// auth who the viewer is and what they may see; it holds no clinical logic and writes no SQL.
//
// The front-end packages come from npm at the versions pinned in web/package-lock.json; their
// minified files are committed under web/vendor (copied there by `make portal-assets`, checked
// byte for byte against the npm tarballs of the lock's integrity by TestVendoredAssets) and
// embedded with go:embed, so a fresh clone builds with `go build` alone. Every asset is served
// under a content-hashed URL, cached for a year as immutable, and referenced with Subresource
// Integrity; pages carry a Content-Security-Policy that allows scripts and styles from the
// portal's own origin only (no inline script). docs/portal.md is the page's specification.
//
// The server mounts the portal with one call (server.Config.Portal → Portal.Mount); the portal
// sits at the server's layer (internal/archtest).
package portal
