package portal

import (
	"embed"
	"fmt"
	"html/template"

	"github.com/vigilhealth/vigil/auth"
)

//go:embed templates/*.html
var templateFS embed.FS

// base is what the layout needs on every page.
type base struct {
	Title    string
	SignedIn bool
	CSRF     string // the session's CSRF token, for the forms of the page (sign-out)
	// IdleSeconds is the session's idle timeout (auth.SessionConfig.IdleTimeout): idle.js
	// warns before it signs the viewer off.
	IdleSeconds int
}

func (p *Portal) base(title string, pr *auth.Principal, sessionToken string) base {
	b := base{Title: title, SignedIn: pr != nil}
	if pr != nil && sessionToken != "" {
		b.CSRF = auth.CSRFToken(sessionToken)
		b.IdleSeconds = int(p.cfg.Auth.Config().Session.IdleTimeout.Seconds())
	}
	return b
}

// pageFiles are the pages and the templates each is parsed with (the layout and partials).
var pageFiles = map[string][]string{
	"signin.html":  {"templates/layout.html", "templates/signin.html"},
	"ward.html":    {"templates/layout.html", "templates/ward.html", "templates/tile.html"},
	"tile":         {"templates/tile.html"},
	"alarms.html":  {"templates/layout.html", "templates/alarms.html"},
	"patient.html": {"templates/layout.html", "templates/patient.html"},
	"error.html":   {"templates/layout.html", "templates/error.html"},
}

// parseTemplates parses every page with its layout; templates name assets through the asset
// function, which gives the hashed URL and integrity (an unknown name fails here or at the
// first render in the tests).
func parseTemplates(a *Assets) (map[string]*template.Template, error) {
	funcs := template.FuncMap{"asset": a.Get}
	out := map[string]*template.Template{}
	for name, files := range pageFiles {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, files...)
		if err != nil {
			return nil, fmt.Errorf("portal: templates of %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}
