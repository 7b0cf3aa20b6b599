package portal

// Vendored lists each file of web/vendor with the npm package it comes from and its path in
// that package's tarball. `make portal-assets` copies them from web/node_modules (installed
// by `npm ci` from web/package-lock.json); TestVendoredAssets checks every committed file
// byte for byte against the tarball whose sha512 is the lock's integrity.
var Vendored = []VendoredFile{
	{File: "htmx.min.js", Package: "htmx.org", Path: "dist/htmx.min.js"},
	{File: "uPlot.iife.min.js", Package: "uplot", Path: "dist/uPlot.iife.min.js"},
	{File: "uPlot.min.css", Package: "uplot", Path: "dist/uPlot.min.css"},
}

// VendoredFile is one file copied from an npm package.
type VendoredFile struct {
	File    string // name in web/vendor (and the asset's logical name)
	Package string // npm package name, pinned in web/package.json and web/package-lock.json
	Path    string // path inside the package (the tarball's "package/" prefix removed)
}
