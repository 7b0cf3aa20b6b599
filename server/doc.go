// Package server is Vigil's thin HTTP shell (echo): request in, one call into a domain package, response out, with errors mapped to HTTP in one place.
package server
