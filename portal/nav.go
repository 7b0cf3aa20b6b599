package portal

import (
	"bytes"
	"encoding/json"

	"github.com/vigilhealth/vigil/auth"
)

// navLink is one entry of the navigation beyond the ward overview.
type navLink struct {
	URL, Label string
	Current    bool
}

// navPages are the pages of the navigation and the permission each needs: a link is shown
// only to a viewer the policy lets open it (nothing on a page the viewer may not see).
var navPages = []struct {
	url, label, title, obj, act string
}{
	{"/audit", "Audit trail", "Audit trail", auth.ObjAudit, "read"},
	{"/devices", "Devices", "Devices", auth.ObjDevice, "read"},
	{"/admin", "Administration", "Administration", auth.ObjUser, "read"},
}

// nav lists the pages the viewer may open; title marks the current one.
func (p *Portal) nav(pr *auth.Principal, title string) []navLink {
	if pr == nil {
		return nil
	}
	var out []navLink
	for _, n := range navPages {
		ok := p.allowed(pr, n.obj, n.act)
		switch n.url {
		case "/admin":
			ok = len(p.mayAdmin(pr)) > 0 // any of its sections (admin.go)
		case "/audit":
			ok = ok && p.cfg.Audit != nil
		case "/devices":
			ok = ok && p.cfg.Devices != nil
		}
		if p.routed(n.url) && ok {
			out = append(out, navLink{URL: n.url, Label: n.label, Current: n.title == title})
		}
	}
	return out
}

// routed reports whether the portal serves the page at url (a page is listed once mounted).
func (p *Portal) routed(url string) bool {
	for _, r := range Routes() {
		if r == "GET "+url {
			return true
		}
	}
	return false
}

func jsonIndent(b *bytes.Buffer, raw []byte) error { return json.Indent(b, raw, "", "  ") }
